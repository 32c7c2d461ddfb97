//! EventService: the ordered dispatch event stream for subscribers (analytics, billing, the
//! rider and driver apps' back ends). A subscriber may start at any retained offset.

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{self, pb_event, pb_event_kind};
use super::follow::{Source, Step, follow};
use crate::engine::Engine;
use crate::pb::{self, event_service_server::EventService};

/// The EventService implementation.
#[derive(Debug, Clone)]
pub(crate) struct EventApi {
    engine: Engine,
}

impl EventApi {
    /// A service following `engine`'s event bus.
    pub(crate) fn new(engine: Engine) -> Self {
        EventApi { engine }
    }
}

#[tonic::async_trait]
impl EventService for EventApi {
    type SubscribeStream = ReceiverStream<Result<pb::DispatchEvent, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = request.into_inner();
        let kinds = req
            .kinds
            .iter()
            .map(|&k| convert::event_kind(k))
            .collect::<Result<Vec<_>, _>>()?;
        let head = self.engine.bus().next_offset();
        let from = req.from_offset.unwrap_or(head);
        if from > head {
            return Err(Status::out_of_range(format!(
                "from_offset {from} is beyond the head of the stream (next offset: {head})"
            )));
        }
        let stream = follow(Source::all(&self.engine, from), Vec::new(), move |event| {
            if kinds.is_empty() || kinds.contains(&pb_event_kind(&event.kind)) {
                Step::Send(pb_event(event))
            } else {
                Step::Skip
            }
        });
        Ok(Response::new(stream))
    }
}
