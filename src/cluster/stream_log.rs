//! A region's durable log in cluster mode: one JetStream stream per region (one subject, file
//! storage, `cluster.stream_replicas` copies), behind the engine's `CommitLog` seam.
//!
//! Each command group's events go out as one message (chunked when large), published with
//! `Nats-Expected-Last-Subject-Sequence` set to the last sequence this owner knows: JetStream
//! refuses the append if anyone else wrote to the region since (fencing). A refused or failed
//! append is an error the writer stops on, so the region stops serving at once and nothing is
//! acknowledged that JetStream did not acknowledge first.
//!
//! Every message carries the `Dispatch-Owner` header naming the process that wrote it, so the
//! stream itself shows who wrote what. A new owner appends a takeover message (header
//! `Dispatch-Takeover`) before it serves, holding one event, `RegionTakenOver`, so subscribers
//! see the change of owner in the event stream too: from then on any append by the previous
//! owner, which knows an older last sequence, is refused. (Streams written before the event
//! existed hold takeover messages with no events; they read back as such.)

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::{HeaderMap, header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::runtime::Handle;

use crate::engine::CommitLog;
use crate::events::Event;

/// Most events in one stream message (keeps a message far below NATS's 1 MiB default).
const EVENTS_PER_MESSAGE: usize = 1_000;

/// Header naming the member that wrote a message.
pub(crate) const OWNER_HEADER: &str = "Dispatch-Owner";
/// Header marking a takeover message (its value: the new owner).
pub(crate) const TAKEOVER_HEADER: &str = "Dispatch-Takeover";

/// The subject a region's events are published on.
pub(crate) fn subject(region: &str) -> String {
    format!("dispatch.region.{region}.events")
}

/// The name of a region's stream.
pub(crate) fn stream_name(region: &str) -> String {
    format!("DISPATCH_{region}")
}

/// The append side of one region's stream, owned by that region's log writer thread.
#[derive(Debug)]
pub(crate) struct StreamLog {
    js: jetstream::Context,
    region: String,
    subject: String,
    /// Our member id, written in every message's `Dispatch-Owner` header.
    owner: String,
    /// The sequence of the last message on the subject, as this owner knows it.
    last_seq: u64,
    /// The server's runtime: the writer thread is a plain thread and blocks on its appends.
    runtime: Handle,
}

impl StreamLog {
    /// Opens (creating if absent) the stream of `region` and reads its history after sequence
    /// `after` (the one a snapshot covers; 0: the whole history). Refused when messages after
    /// `after` are gone (trimmed after snapshots this owner cannot use): the state they built
    /// would be missing.
    pub(crate) async fn open(
        js: &jetstream::Context,
        region: &str,
        replicas: usize,
        owner: &str,
        after: u64,
    ) -> Result<(StreamLog, Vec<Event>), String> {
        let subject = subject(region);
        let mut stream = js
            .get_or_create_stream(stream::Config {
                name: stream_name(region),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("region {region}: opening its JetStream stream: {e}"))?;
        let info = stream
            .info()
            .await
            .map_err(|e| format!("region {region}: reading its stream's state: {e}"))?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        // An empty stream that never held a message says first 0; a purged one, last + 1.
        if first > after + 1 && last > after {
            return Err(format!(
                "region {region}: its stream begins at sequence {first}, but the state it needs \
                 is only known up to sequence {after} (no snapshot covers the messages trimmed \
                 before {first})"
            ));
        }
        if after > last {
            return Err(format!(
                "region {region}: its newest snapshot covers sequence {after}, past the stream's \
                 last ({last}): the stream is not the one the snapshot was taken from"
            ));
        }
        let (history, _) =
            read_history(&stream, region, first.max(after + 1), last, usize::MAX).await?;
        let log = StreamLog {
            js: js.clone(),
            region: region.to_owned(),
            subject,
            owner: owner.to_owned(),
            last_seq: last,
            runtime: Handle::current(),
        };
        Ok((log, history))
    }

    /// Appends the takeover message holding `event` (the `RegionTakenOver` at the region's
    /// next offset), fenced like any append, so once it is in no earlier owner can append
    /// again. Refused: someone wrote since we read the history.
    pub(crate) async fn take_over(&mut self, event: &Event) -> Result<(), String> {
        self.publish(std::slice::from_ref(event), true).await
    }

    /// The member that wrote the stream's last message, if there is one and it names its
    /// writer (a read failure only loses the name: the takeover event then says `None`).
    pub(crate) async fn last_writer(&self) -> Option<String> {
        if self.last_seq == 0 {
            return None;
        }
        let stream = self.js.get_stream(stream_name(&self.region)).await.ok()?;
        let message = stream.direct_get(self.last_seq).await.ok()?;
        let owner = message.headers.get(OWNER_HEADER)?;
        Some(owner.as_str().to_owned())
    }

    async fn append(&mut self, events: &[Event]) -> Result<(), String> {
        for chunk in events.chunks(EVENTS_PER_MESSAGE) {
            self.publish(chunk, false).await?;
        }
        Ok(())
    }

    async fn publish(&mut self, chunk: &[Event], takeover: bool) -> Result<(), String> {
        let payload = postcard::to_stdvec(chunk)
            .map_err(|e| format!("encoding events for the stream: {e}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            self.last_seq.to_string().as_str(),
        );
        headers.insert(OWNER_HEADER, self.owner.as_str());
        if takeover {
            headers.insert(TAKEOVER_HEADER, self.owner.as_str());
        }
        let refused = |e: async_nats::jetstream::context::PublishError| {
            if e.kind() == PublishErrorKind::WrongLastSequence {
                format!(
                    "region {} lost: JetStream refused our append after sequence {} \
                     (another owner wrote to the region); this process stops serving it",
                    self.region, self.last_seq
                )
            } else {
                format!(
                    "region {}: JetStream did not acknowledge an append: {e}",
                    self.region
                )
            }
        };
        let ack = self
            .js
            .publish_with_headers(self.subject.clone(), headers, Bytes::from(payload))
            .await
            .map_err(refused)?
            .await
            .map_err(refused)?;
        self.last_seq = ack.sequence;
        Ok(())
    }
}

impl CommitLog for StreamLog {
    fn commit_events(&mut self, events: &[Event]) -> Result<(), String> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.append(events))
    }

    fn position(&self) -> u64 {
        self.last_seq
    }
}

/// Region `region`'s stream (which must exist) and its state now: first and last sequence.
pub(crate) async fn existing_stream(
    js: &jetstream::Context,
    region: &str,
) -> Result<(stream::Stream, stream::State), String> {
    let mut stream = js
        .get_stream(stream_name(region))
        .await
        .map_err(|e| format!("region {region}: opening its stream: {e}"))?;
    let state = stream
        .info()
        .await
        .map_err(|e| format!("region {region}: reading its stream's state: {e}"))?
        .state
        .clone();
    Ok((stream, state))
}

/// One message of a region's stream as read back: who wrote it and what it holds.
#[derive(Debug)]
pub(crate) struct StreamMessage {
    /// Its stream sequence.
    pub(crate) seq: u64,
    /// The `Dispatch-Owner` header (absent: not written by a dispatchd).
    pub(crate) owner: Option<String>,
    /// The `Dispatch-Takeover` header: the new owner this message announces.
    pub(crate) takeover: Option<String>,
    /// Its events, or why its payload is not a list of events.
    pub(crate) events: Result<Vec<Event>, String>,
}

/// Stream messages `first..=last` of `stream`, in order.
pub(crate) async fn read_messages(
    stream: &stream::Stream,
    region: &str,
    first: u64,
    last: u64,
) -> Result<Vec<StreamMessage>, String> {
    let mut messages = Vec::new();
    if last == 0 {
        return Ok(messages);
    }
    for seq in first.max(1)..=last {
        let message = stream
            .direct_get(seq)
            .await
            .map_err(|e| format!("region {region}: reading stream message {seq}: {e}"))?;
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        messages.push(StreamMessage {
            seq,
            owner: header(OWNER_HEADER),
            takeover: header(TAKEOVER_HEADER),
            events: postcard::from_bytes(&message.payload)
                .map_err(|e| format!("region {region}: stream message {seq} is unreadable: {e}")),
        });
    }
    Ok(messages)
}

/// The events of stream messages `first..=last`, in order. Read through an ordered consumer
/// (messages pushed in batches, not one direct get and round trip per message, which was
/// ~0.3 ms each and so the whole of a takeover's time); it stops at `last`, once nothing is
/// pending (a purge may have taken the last message), or once it holds `limit` events. Messages
/// before `first` are skipped, should the consumer deliver them. Also returns the sequence after
/// the last message read (`first` when none was).
pub(super) async fn read_history(
    stream: &stream::Stream,
    region: &str,
    first: u64,
    last: u64,
    limit: usize,
) -> Result<(Vec<Event>, u64), String> {
    let mut events = Vec::new();
    let mut next = first;
    if last == 0 || first > last {
        return Ok((events, next));
    }
    let failed = |e: &dyn std::fmt::Display| format!("region {region}: reading its stream: {e}");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: first.max(1),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| failed(&e))?;
        let info = message.info().map_err(|e| failed(&e))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        // An ordered consumer that recreates itself before its first message starts over
        // from the stream's first message (async-nats 0.51 forgets the start sequence then).
        if seq < first {
            continue;
        }
        if seq > last {
            break;
        }
        let chunk: Vec<Event> = postcard::from_bytes(&message.payload)
            .map_err(|e| format!("region {region}: stream message {seq} is unreadable: {e}"))?;
        events.extend(chunk);
        next = seq + 1;
        if seq >= last || pending == 0 || events.len() >= limit {
            break;
        }
    }
    Ok((events, next))
}
