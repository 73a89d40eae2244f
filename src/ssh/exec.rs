//! `ssh host <command>`: the command line is split like a shell would (never by one), parsed
//! by the same clap table as the local CLI and run by [`commands::execute`] on a blocking
//! thread. Standard output and error go back over the channel (stdout data, stderr extended
//! data); channel data feeds standard input for `import -`, which publishes only when the
//! client ended it with EOF. Then: exit status (0, 1, or 2 for usage), EOF, close. A command
//! the caller's role or upload area does not allow is also audited as refused.
//!
//! Every write waits a bounded time ([`ChannelWriter`]), and a command takes one of the
//! gateway's command slots ([`Gateway::commands`]: so many in all, fewer per user) for as long
//! as its thread runs: a client that never reads its output cannot fill the blocking pool.
//!
//! `scp -t …` (what `scp -O` runs) is handed to [`super::scp`].

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::audit::clip;
use super::channel_writer::ChannelWriter;
use super::{Gateway, command_line};
use crate::access::Caller;
use crate::commands::help::RemoteCommandLine;
use crate::commands::{self, Command, Context, ProgressStyle};
use crate::limits::SlotsFull;

/// Standard-input chunks queued for a command before the channel stops being read.
const STDIN_QUEUE: usize = 64;

/// Runs one exec request to its end; `connection_ended` is cancelled when its connection
/// ends.
pub async fn run(
    gateway: Arc<Gateway>,
    caller: Caller,
    channel: Channel<Msg>,
    command: Vec<u8>,
    peer: SocketAddr,
    connection_ended: CancellationToken,
) {
    let (mut reader, half) = channel.split();
    let writer = ChannelWriter::new(half, connection_ended.clone(), gateway.send_timeout());
    let started = Instant::now();
    let (name, code) = dispatch(
        &gateway,
        &caller,
        peer,
        &command,
        &mut reader,
        &writer,
        &connection_ended,
    )
    .await;
    gateway.audit.record(
        "command",
        json!({
            "user": caller.name(),
            "address": peer.ip().to_string(),
            // The command's name when it parsed (import, remove, scp, …), for filtering.
            "name": name,
            "command": clip(&String::from_utf8_lossy(&command)),
            "exit": code,
            "ms": started.elapsed().as_millis() as u64,
        }),
    );
    writer.finish(code).await;
}

/// Splits, parses and runs the command line; returns the command's name (when it parsed)
/// and the exit status.
async fn dispatch(
    gateway: &Arc<Gateway>,
    caller: &Caller,
    peer: SocketAddr,
    command: &[u8],
    reader: &mut russh::ChannelReadHalf,
    writer: &ChannelWriter,
    connection_ended: &CancellationToken,
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
                let _ = writer.data(text.into_bytes()).await;
            } else {
                send_error_line(writer, &text).await;
            }
            (None, code as u32)
        }
        Ok(cli) => {
            let name = cli.command.name();
            let outcome = run_command(
                gateway,
                caller.clone(),
                cli.command,
                reader,
                writer,
                connection_ended,
            )
            .await;
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
    writer: &ChannelWriter,
    connection_ended: &CancellationToken,
) -> commands::Outcome {
    // Held by the thread, not by this task: it stays taken until the command has returned.
    let slot = match gateway.commands.take(caller.name()) {
        Ok(slot) => slot,
        Err(full) => {
            let reason = match full {
                SlotsFull::Key(running) => format!(
                    "you have {running} commands running, the most one user may; wait for one to finish"
                ),
                SlotsFull::Total(running) => format!(
                    "the server is running {running} commands, its limit; try again shortly"
                ),
            };
            send_error_line(writer, &reason).await;
            return commands::Outcome {
                code: 1,
                refused: Some(reason),
            };
        }
    };
    let wants_stdin = matches!(&command, Command::Import(import) if import.metadata == "-");
    let (stdin_tx, stdin_rx) = mpsc::channel::<StdinChunk>(STDIN_QUEUE);
    let runtime = tokio::runtime::Handle::current();
    let job = {
        let gateway = gateway.clone();
        let out = writer.blocking(runtime.clone(), None);
        let err = writer.blocking(runtime, Some(1));
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
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
                areas: &gateway.areas,
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
            },
            () = connection_ended.cancelled(), if reading => {
                reading = false;
                stdin_tx = None;
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

/// Sends `simplestream-server: <message>` as one stderr line.
pub async fn send_error_line(writer: &ChannelWriter, message: &str) {
    let mut line = Vec::new();
    commands::report_error(&mut line, message);
    let _ = writer.send(Some(1), line).await;
}
