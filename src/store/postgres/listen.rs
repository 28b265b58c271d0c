//! `LISTEN` on a dedicated connection: run saves announced as they commit, and every drop of
//! the connection made visible, so that a missed notification is never a missed change.

use std::future::poll_fn;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls, Socket};

use super::PgLocation;
use crate::store::StoreError;

/// Events the listener buffers for a slow reader before it stops reading the connection
/// (PostgreSQL then queues the notifications server-side).
const BUFFER: usize = 1024;

/// The first wait before reconnecting; it doubles per failed attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A listening connection that has seen no traffic for this long is checked with a query, so
/// that a silently dead network path is noticed.
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// What a [`ChangeListener`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenEvent {
    /// A save committed; every change up to this `change_seq` is committed.
    Changed(u64),
    /// The listening connection dropped: saves are not announced until [`ListenEvent::Reconnected`].
    Lost { error: String },
    /// Listening again after [`ListenEvent::Lost`]. Saves made in between were not announced:
    /// read `changes_since` from your cursor to catch up.
    Reconnected,
}

/// Notifications of a store's run saves, from a connection of its own. Dropping it stops
/// listening and closes the connection.
#[derive(Debug)]
pub struct ChangeListener {
    events: mpsc::Receiver<ListenEvent>,
    task: JoinHandle<()>,
    channel: String,
}

impl ChangeListener {
    /// The next event; `None` only if the listening task is gone (it runs until dropped).
    pub async fn next(&mut self) -> Option<ListenEvent> {
        self.events.recv().await
    }

    /// The next event if one is already there.
    pub fn try_next(&mut self) -> Option<ListenEvent> {
        self.events.try_recv().ok()
    }

    /// The channel listened to.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl Drop for ChangeListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type PgConnection = Connection<Socket, NoTlsStream>;

/// Why a listening connection ended.
enum Ended {
    /// The connection failed or closed; reconnect.
    Lost(String),
    /// Nobody reads the events any more; stop.
    Unread,
}

/// Connects and listens, then hands the connection to a task that keeps listening.
pub(super) async fn start(config: Config, location: PgLocation, channel: String) -> Result<ChangeListener, StoreError> {
    let (client, connection) = subscribe(&config, &channel).await.map_err(|error| match error {
        Subscribe::Connect(error) | Subscribe::Listen(error) => location.error(&error),
        Subscribe::Closed => location.message(location.to_string(), "the connection closed before LISTEN completed"),
    })?;
    let (sender, events) = mpsc::channel(BUFFER);
    let task_channel = channel.clone();
    let task = tokio::spawn(async move {
        run(config, location, task_channel, client, connection, sender).await;
    });
    Ok(ChangeListener { events, task, channel })
}

enum Subscribe {
    Connect(tokio_postgres::Error),
    Listen(tokio_postgres::Error),
    Closed,
}

/// A new connection that has executed `LISTEN "<channel>"`.
async fn subscribe(config: &Config, channel: &str) -> Result<(Client, PgConnection), Subscribe> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(Subscribe::Connect)?;
    let statement = format!("LISTEN {}", quote_identifier(channel));
    {
        let listen = client.batch_execute(&statement);
        tokio::pin!(listen);
        // The connection must be driven for the statement to complete; nothing is announced
        // before LISTEN, so whatever else arrives meanwhile is a notice.
        loop {
            tokio::select! {
                done = &mut listen => {
                    done.map_err(Subscribe::Listen)?;
                    break;
                }
                message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(Subscribe::Listen(error)),
                    None => return Err(Subscribe::Closed),
                }
            }
        }
    }
    Ok((client, connection))
}

/// `"name"` with inner quotes doubled.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Listens until the events are not read any more, reconnecting whenever the connection drops.
async fn run(
    config: Config,
    location: PgLocation,
    channel: String,
    client: Client,
    connection: PgConnection,
    sender: mpsc::Sender<ListenEvent>,
) {
    let mut current = Some((client, connection));
    loop {
        let Some((client, connection)) = current.take() else { return };
        let error = match listen(&client, connection, &sender, &location).await {
            Ended::Unread => return,
            Ended::Lost(error) => error,
        };
        drop(client);
        tracing::warn!(store = %location, channel, error, "lost the change listener's connection; reconnecting");
        if sender.send(ListenEvent::Lost { error }).await.is_err() {
            return;
        }
        let mut delay = FIRST_BACKOFF;
        let mut attempt = 0_u32;
        while current.is_none() {
            tokio::time::sleep(delay).await;
            if sender.is_closed() {
                return;
            }
            attempt += 1;
            let next = (delay * 2).min(MAX_BACKOFF);
            match subscribe(&config, &channel).await {
                Ok(subscribed) => current = Some(subscribed),
                Err(Subscribe::Connect(error) | Subscribe::Listen(error)) => {
                    let error = location.describe(&error);
                    tracing::warn!(store = %location, attempt, error, retry_in = ?next, "cannot reconnect the change listener");
                }
                Err(Subscribe::Closed) => {
                    tracing::warn!(store = %location, attempt, retry_in = ?next, "the change listener's connection closed at once");
                }
            }
            delay = next;
        }
        tracing::info!(store = %location, channel, attempt, "change listener reconnected");
        if sender.send(ListenEvent::Reconnected).await.is_err() {
            return;
        }
    }
}

/// Forwards the notifications of one connection until it fails or the reader goes away.
async fn listen(
    client: &Client,
    mut connection: PgConnection,
    sender: &mpsc::Sender<ListenEvent>,
    location: &PgLocation,
) -> Ended {
    let mut idle = tokio::time::interval(PING_EVERY);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    idle.reset();
    loop {
        tokio::select! {
            message = poll_fn(|cx| connection.poll_message(cx)) => {
                if let Some(ended) = forward(message, sender, location).await {
                    return ended;
                }
                idle.reset();
            }
            _ = idle.tick() => {
                // A query on the connection, while still driving it (and forwarding).
                let ping = tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1"));
                tokio::pin!(ping);
                loop {
                    tokio::select! {
                        answered = &mut ping => match answered {
                            Ok(Ok(_)) => break,
                            Ok(Err(error)) => return Ended::Lost(location.describe(&error)),
                            Err(_) => return Ended::Lost(format!("no answer to a ping within {PING_TIMEOUT:?}")),
                        },
                        message = poll_fn(|cx| connection.poll_message(cx)) => {
                            if let Some(ended) = forward(message, sender, location).await {
                                return ended;
                            }
                        }
                    }
                }
            }
            _ = sender.closed() => return Ended::Unread,
        }
    }
}

/// Handles one message of the connection; `Some` when listening on it must end.
async fn forward(
    message: Option<Result<AsyncMessage, tokio_postgres::Error>>,
    sender: &mpsc::Sender<ListenEvent>,
    location: &PgLocation,
) -> Option<Ended> {
    match message {
        Some(Ok(AsyncMessage::Notification(notification))) => match notification.payload().parse::<u64>() {
            Ok(change_seq) => sender.send(ListenEvent::Changed(change_seq)).await.err().map(|_| Ended::Unread),
            Err(_) => {
                tracing::warn!(
                    channel = notification.channel(),
                    payload = notification.payload(),
                    "ignoring a notification that is not a change number"
                );
                None
            }
        },
        Some(Ok(AsyncMessage::Notice(notice))) => {
            tracing::debug!(severity = notice.severity(), message = notice.message(), "notice on the listener");
            None
        }
        Some(Ok(_)) => None,
        Some(Err(error)) => Some(Ended::Lost(location.describe(&error))),
        None => Some(Ended::Lost("the server closed the connection".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_quoted() {
        assert_eq!(quote_identifier("salvage_runs"), "\"salvage_runs\"");
        assert_eq!(quote_identifier("salvage_runs:a\"b"), "\"salvage_runs:a\"\"b\"");
    }
}
