//! `ssh host <command>`: the command line is split like a shell would (never by one), parsed
//! by the same clap table as the local CLI and run by [`commands::execute`] on a blocking
//! thread. Standard output and error go back over the channel (stdout data, stderr extended
//! data); channel data feeds standard input for `import -`, which publishes only when the
//! client ended it with EOF. Then: exit status (0, 1, or 2 for usage), EOF, close. A command
//! the caller's role or upload area does not allow is also audited as refused.
//!
//! `scp -t …` (what `scp -O` runs) is handed to [`super::scp`].

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelWriteHalf};
use serde_json::json;
use tokio::sync::mpsc;

use super::{Gateway, command_line};
use crate::access::Caller;
use crate::commands::help::RemoteCommandLine;
use crate::commands::{self, Command, Context, ProgressStyle};

/// Standard-input chunks queued for a command before the channel stops being read.
const STDIN_QUEUE: usize = 64;

/// Runs one exec request to its end.
pub async fn run(
    gateway: Arc<Gateway>,
    caller: Caller,
    channel: Channel<Msg>,
    command: Vec<u8>,
    peer: SocketAddr,
) {
    let (mut reader, writer) = channel.split();
    let writer = Arc::new(writer);
    let started = Instant::now();
    let (name, code) = dispatch(&gateway, &caller, peer, &command, &mut reader, &writer).await;
    gateway.audit.record(
        "command",
        json!({
            "user": caller.name(),
            "address": peer.ip().to_string(),
            // The command's name when it parsed (import, remove, scp, …), for filtering.
            "name": name,
            "command": String::from_utf8_lossy(&command),
            "exit": code,
            "ms": started.elapsed().as_millis() as u64,
        }),
    );
    finish(&writer, code).await;
}

/// Splits, parses and runs the command line; returns the command's name (when it parsed)
/// and the exit status.
async fn dispatch(
    gateway: &Arc<Gateway>,
    caller: &Caller,
    peer: SocketAddr,
    command: &[u8],
    reader: &mut russh::ChannelReadHalf,
    writer: &Arc<ChannelWriteHalf<Msg>>,
) -> (Option<&'static str>, u32) {
    let words = match std::str::from_utf8(command)
        .map_err(|_| "the command line is not UTF-8 text".to_string())
        .and_then(|text| command_line::split(text).map_err(|e| e.to_string()))
    {
        Ok(words) if words.is_empty() => {
            send_error_line(
                writer,
                "no command given; `ssh <host> help` lists the commands",
            )
            .await;
            return (None, 2);
        }
        Ok(words) => words,
        Err(message) => {
            send_error_line(writer, &message).await;
            return (None, 2);
        }
    };
    if words[0] == "scp" {
        return (
            Some("scp"),
            super::scp::run(gateway, caller, peer.ip(), reader, writer, &words).await,
        );
    }
    match RemoteCommandLine::try_parse_from(&words) {
        Err(e) => {
            let (to_stdout, text, code) = commands::clap_outcome(&e);
            if to_stdout {
                let _ = writer.data_bytes(text.into_bytes()).await;
            } else {
                send_error_line(writer, &text).await;
            }
            (None, code as u32)
        }
        Ok(cli) => {
            let name = cli.command.name();
            let outcome = run_command(gateway, caller.clone(), cli.command, reader, writer).await;
            if let Some(reason) = &outcome.refused {
                gateway.audit.refused(
                    &caller.name(),
                    peer.ip(),
                    &String::from_utf8_lossy(command),
                    reason,
                );
            }
            (Some(name), outcome.code as u32)
        }
    }
}

/// Runs a parsed command on a blocking thread while feeding it channel data as stdin.
async fn run_command(
    gateway: &Arc<Gateway>,
    caller: Caller,
    command: Command,
    reader: &mut russh::ChannelReadHalf,
    writer: &Arc<ChannelWriteHalf<Msg>>,
) -> commands::Outcome {
    let wants_stdin = matches!(&command, Command::Import(import) if import.metadata == "-");
    let (stdin_tx, stdin_rx) = mpsc::channel::<StdinChunk>(STDIN_QUEUE);
    let runtime = tokio::runtime::Handle::current();
    let job = {
        let gateway = gateway.clone();
        let out = ChannelOutput::new(runtime.clone(), writer.clone(), None);
        let err = ChannelOutput::new(runtime, writer.clone(), Some(1));
        tokio::task::spawn_blocking(move || {
            let mut out = io::BufWriter::with_capacity(16 << 10, out);
            let mut err = err;
            let stdin: Option<Box<dyn Read + Send>> = if wants_stdin {
                Some(Box::new(ChannelInput::new(stdin_rx)))
            } else {
                None
            };
            let config = gateway.config();
            let mut ctx = Context {
                caller: &caller,
                catalog: &gateway.catalog,
                config: &config,
                out: &mut out,
                err: &mut err,
                stdin,
                progress: ProgressStyle::Lines,
                digests: Some(&gateway.digests),
            };
            let outcome = commands::execute(command, &mut ctx);
            let _ = out.flush();
            outcome
        })
    };
    tokio::pin!(job);
    let mut stdin_tx = wants_stdin.then_some(stdin_tx);
    let mut reading = true;
    loop {
        tokio::select! {
            result = &mut job => {
                return match result {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        tracing::error!(error = %e, "a command failed unexpectedly");
                        send_error_line(writer, "the command failed unexpectedly; the server log has details").await;
                        commands::Outcome { code: 1, refused: None }
                    }
                };
            }
            message = reader.wait(), if reading => match message {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(tx) = &stdin_tx
                        && tx.send(StdinChunk::Data(data)).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                Some(ChannelMsg::Eof) => {
                    if let Some(tx) = stdin_tx.take() {
                        let _ = tx.send(StdinChunk::End).await;
                    }
                }
                Some(_) => {}
                None => {
                    // The channel closed without EOF: whatever reads stdin sees it cut off.
                    reading = false;
                    stdin_tx = None;
                }
            }
        }
    }
}

enum StdinChunk {
    Data(Bytes),
    /// The client sent EOF: the stream ended complete.
    End,
}

/// Standard input of a command, from channel data. Reading past the data without the
/// client's EOF is an error, so `import -` never publishes a truncated stream.
struct ChannelInput {
    rx: mpsc::Receiver<StdinChunk>,
    current: Bytes,
    ended: bool,
}

impl ChannelInput {
    fn new(rx: mpsc::Receiver<StdinChunk>) -> Self {
        ChannelInput {
            rx,
            current: Bytes::new(),
            ended: false,
        }
    }
}

impl Read for ChannelInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(StdinChunk::Data(data)) => self.current = data,
                Some(StdinChunk::End) => self.ended = true,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "standard input was cut off before its end (the connection closed)",
                    ));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A command's stdout or stderr: blocking writes that wait for the channel's window.
struct ChannelOutput {
    runtime: tokio::runtime::Handle,
    writer: Arc<ChannelWriteHalf<Msg>>,
    ext: Option<u32>,
}

impl ChannelOutput {
    fn new(
        runtime: tokio::runtime::Handle,
        writer: Arc<ChannelWriteHalf<Msg>>,
        ext: Option<u32>,
    ) -> Self {
        ChannelOutput {
            runtime,
            writer,
            ext,
        }
    }
}

impl Write for ChannelOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let data = Bytes::copy_from_slice(buf);
        let sent = match self.ext {
            None => self.runtime.block_on(self.writer.data_bytes(data)),
            Some(ext) => self
                .runtime
                .block_on(self.writer.extended_data_bytes(ext, data)),
        };
        sent.map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends `simplestream-server: <message>` as one stderr line.
pub async fn send_error_line(writer: &ChannelWriteHalf<Msg>, message: &str) {
    let mut line = Vec::new();
    commands::report_error(&mut line, message);
    let _ = writer.extended_data_bytes(1, line).await;
}

/// Exit status, EOF, close: how a command ends for the client.
pub async fn finish(writer: &ChannelWriteHalf<Msg>, code: u32) {
    let _ = writer.exit_status(code).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
}
