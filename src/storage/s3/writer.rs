//! One writer per bucket. Where the store honours conditional writes (`If-None-Match` and
//! `If-Match` on PUT: AWS S3, MinIO, Ceph RGW), the writer holds a lease object, taken and
//! renewed by conditional PUTs, so a second writer is refused. Garage 2.x ignores those
//! headers (a "create only" PUT silently overwrites), so a lease could not exclude anyone:
//! [`conditional_writes_hold`] finds that out at start, and the operator must then say
//! `storage.conditional_writes = false` and keep to one writer by deployment.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::client::{Client, Condition, Payload, Put};

/// The lease's key.
pub const LEASE_KEY: &str = "state/writer-lease.json";
/// A lease not renewed for this long is free to take.
const LEASE_SECS: i64 = 60;
const RENEW_EVERY: Duration = Duration::from_secs(20);

/// Whether the store refuses a create-only PUT over an existing key: writes a probe key
/// twice with `If-None-Match: *` (the second must be refused), then deletes it.
pub async fn conditional_writes_hold(client: &Client) -> std::io::Result<bool> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let probe = format!("state/probe-{}-{nanos}", std::process::id());
    let payload = Payload::Bytes(Bytes::from_static(b"probe\n"));
    let first = client
        .put(&probe, &payload, Condition::Absent, None)
        .await?;
    let second = client
        .put(&probe, &payload, Condition::Absent, None)
        .await?;
    client.delete(&probe).await?;
    Ok(matches!(first, Put::Done(_)) && second == Put::Refused)
}

/// What the lease object holds.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    expires: i64,
}

/// The writer's lease, renewed on the client's runtime until dropped.
pub struct Lease {
    renewal: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

impl Lease {
    /// Takes the lease for `holder` (this host and data directory: the same writer restarted,
    /// or a command run beside its server, takes it back). One line when another holds it.
    pub fn take(client: Arc<Client>, holder: &str) -> Result<Lease, String> {
        let etag = client
            .block_on(acquire(&client, holder))
            .map_err(|e| e.to_string())??;
        let etag = Arc::new(Mutex::new(etag));
        let holder = holder.to_string();
        let renewing = client.clone();
        let renewal = client.spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let current = etag.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let renewed = match renew(&renewing, &holder, &current).await {
                    Ok(Put::Done(new)) => Ok(new),
                    // Someone wrote the lease since: take it again if it is still ours.
                    Ok(Put::Refused) => match acquire(&renewing, &holder).await {
                        Ok(Ok(new)) => Ok(new),
                        Ok(Err(why)) => Err(why),
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                };
                match renewed {
                    Ok(new) => *etag.lock().unwrap_or_else(|p| p.into_inner()) = new,
                    Err(why) => tracing::error!("cannot renew the writer's lease: {why}"),
                }
            }
        });
        Ok(Lease { renewal })
    }
}

fn record(holder: &str) -> Payload {
    let record = LeaseRecord {
        holder: holder.to_string(),
        expires: jiff::Timestamp::now().as_second() + LEASE_SECS,
    };
    Payload::Bytes(Bytes::from(serde_json::to_vec(&record).unwrap_or_default()))
}

async fn renew(client: &Client, holder: &str, etag: &str) -> std::io::Result<Put> {
    client
        .put(LEASE_KEY, &record(holder), Condition::Matches(etag), None)
        .await
}

/// Takes the lease when it is free, expired or already `holder`'s: the new entity tag, or
/// why not.
async fn acquire(client: &Client, holder: &str) -> std::io::Result<Result<String, String>> {
    for _ in 0..3 {
        let put = match client.get(LEASE_KEY, 1 << 20).await? {
            None => {
                client
                    .put(LEASE_KEY, &record(holder), Condition::Absent, None)
                    .await?
            }
            Some((head, bytes)) => {
                let current: Option<LeaseRecord> = serde_json::from_slice(&bytes).ok();
                if let Some(current) = current
                    && current.holder != holder
                    && current.expires > jiff::Timestamp::now().as_second()
                {
                    return Ok(Err(format!(
                        "another writer ({}) holds bucket {}'s writer lease; one bucket takes one writer: stop it, or wait {}s after it stopped",
                        current.holder,
                        client.bucket_name(),
                        current.expires - jiff::Timestamp::now().as_second()
                    )));
                }
                client
                    .put(
                        LEASE_KEY,
                        &record(holder),
                        Condition::Matches(&head.etag),
                        None,
                    )
                    .await?
            }
        };
        if let Put::Done(etag) = put {
            return Ok(Ok(etag));
        }
    }
    Ok(Err(format!(
        "cannot take bucket {}'s writer lease: it keeps changing; is another writer starting?",
        client.bucket_name()
    )))
}
