//! The long-lived streams of a city run: one offer stream and one location stream per gateway,
//! and the dispatch event stream (NO_DRIVERS only).

use super::*;

/// Opens the gateway offer streams and forwards every notice, stamped on arrival.
pub(super) async fn open_offer_streams(
    channels: &[Conn],
    ids: &Ids,
    gateways: usize,
    obs_tx: &mpsc::UnboundedSender<Observed>,
) -> Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::with_capacity(gateways);
    for k in 0..gateways {
        let mut client = DriverServiceClient::new(channels[k % channels.len()].clone());
        let req = pb::SubscribeOffersRequest {
            gateway_id: ids.gateway(k),
            resume_from: vec![],
        };
        let mut stream = client
            .subscribe_offers(req)
            .await
            .map_err(|s| Error::rpc("SubscribeOffers", s))?
            .into_inner();
        let tx = obs_tx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(pb::DriverNotice {
                        notice: Some(notice),
                        ..
                    })) => {
                        let at = Instant::now();
                        if tx.send(Observed::Notice { notice, at }).is_err() {
                            return;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        let _ = tx.send(Observed::StreamError("offer stream ended".into()));
                        return;
                    }
                    Err(status) => {
                        let _ = tx.send(Observed::StreamError(rpc::describe(
                            "SubscribeOffers",
                            &status,
                        )));
                        return;
                    }
                }
            }
        }));
    }
    Ok(tasks)
}

/// Subscribes to NO_DRIVERS dispatch events (from the next one on).
pub(super) async fn open_event_stream(
    channel: Conn,
    obs_tx: &mpsc::UnboundedSender<Observed>,
) -> Result<JoinHandle<()>> {
    let mut client = EventServiceClient::new(channel);
    let req = pb::SubscribeRequest {
        from_offset: None,
        kinds: vec![pb::EventKind::NoDrivers as i32],
    };
    let mut stream = client
        .subscribe(req)
        .await
        .map_err(|s| Error::rpc("EventService.Subscribe", s))?
        .into_inner();
    let tx = obs_tx.clone();
    Ok(tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(ev)) => {
                    if ev.kind() == pb::EventKind::NoDrivers
                        && tx
                            .send(Observed::NoDrivers {
                                trip_id: ev.trip_id,
                            })
                            .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    let _ = tx.send(Observed::StreamError(rpc::describe(
                        "EventService.Subscribe",
                        &status,
                    )));
                    return;
                }
            }
        }
    }))
}

/// A location stream's task, which returns the stream's summary when the stream is closed.
pub(super) type SummaryTask = JoinHandle<Result<pb::LocationSummary, tonic::Status>>;

/// Opens one location stream per gateway; each task returns the stream's summary.
pub(super) fn open_location_streams(
    channels: &[Conn],
    gateways: usize,
) -> (Vec<mpsc::Sender<pb::LocationBatch>>, Vec<SummaryTask>) {
    let mut senders = Vec::with_capacity(gateways);
    let mut tasks = Vec::with_capacity(gateways);
    for k in 0..gateways {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let mut client = DriverServiceClient::new(channels[k % channels.len()].clone());
        tasks.push(tokio::spawn(async move {
            client
                .report_locations(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map(|r| r.into_inner())
        }));
        senders.push(tx);
    }
    (senders, tasks)
}

/// Adds a closed location stream's summary to the report.
pub(crate) fn add_summary(report: &mut Report, summary: &pb::LocationSummary) {
    report.location_updates += summary.accepted;
    report.location_rejected += summary.rejected;
    for r in &summary.rejections {
        if r.reason() == pb::LocationRejection::Shed {
            report.location_shed += r.count;
        }
    }
}
