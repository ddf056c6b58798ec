//! The request log's own tamper evidence and retention (issue 5): a request log cut short is
//! detected through its signed digests (not only the state log's), LookupEvents keeps to the
//! retention window of the node's simulated clock (an older StartTime is clamped), and a node's
//! Audit service refuses a request naming another region.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use amisim_log::{DiskLog, EventLog, SledOptions};
use amisim_proto::audit_client::AuditClient;
use amisim_proto::{
    ListDigestsRequest, LookupAttribute, LookupEventsRequest, ResolvePointRequest, VerifyLogRequest,
};
use amisim_region::audit::{self, ApiCall, RecorderOptions, RequestRecorder};
use common::*;

const EVERY: u64 = 4;

fn call(name: &'static str, time_ms: u64, i: u64) -> ApiCall {
    ApiCall {
        event_source: audit::requests::EC2_SOURCE,
        event_name: name,
        account_id: Some(OWNER.into()),
        request_id: format!("req-{i}"),
        request_parameters: serde_json::json!({"imageId": format!("ami-{i:017x}")}).into(),
        time_ms,
        ..ApiCall::default()
    }
}

fn sled_opts() -> SledOptions {
    SledOptions {
        verify_on_open: false,
        ..SledOptions::default()
    }
}

/// A signed node on a disk log in `dir` with a disk request log, served (so its Audit service binds
/// the request signer), `n` calls recorded, then stopped cleanly. Returns the public key.
async fn recorded_node(dir: &Path, n: u64) -> String {
    let log: Arc<dyn EventLog> = Arc::new(DiskLog::open(dir, SledOptions::default()).unwrap());
    let (log, trail) = audit::open_signed(dir, REGION, EVERY, log).unwrap();
    let (node, _clock) = virtual_node(log, 5);
    let requests: Arc<dyn EventLog> =
        Arc::new(DiskLog::open(&dir.join(audit::REQUESTS_DIR), SledOptions::default()).unwrap());
    assert!(node.attach_audit(trail.clone()));
    let recorder = RequestRecorder::start(REGION, requests, true).unwrap();
    assert!(node.attach_requests(recorder.clone()));
    let served = Served::start(node.clone()).await;
    // The Audit service binds the request signer when it starts serving.
    wait_until("the request signer is bound", 10, || {
        recorder.signer().is_some()
    })
    .await;
    for i in 1..=n {
        recorder.record(call("RegisterImage", T0 + i, i));
    }
    let mut client = AuditClient::new(served.channel().await);
    let online = client
        .verify_log(VerifyLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    let req_log = online.request_log.expect("a request log report");
    assert!(req_log.ok, "{req_log:?}");
    assert_eq!(req_log.head_seq, n);
    assert_eq!(req_log.last_digest_seq, n, "VerifyLog signs the head first");
    let digests = client
        .list_digests(ListDigestsRequest {
            log: "requests".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .digests;
    assert!(digests.iter().all(|d| d.log == "requests"), "{digests:?}");
    assert!(
        digests.iter().any(|d| d.seq == EVERY),
        "every N: {digests:?}"
    );
    let key = trail.signer().unwrap().public_key_hex().to_string();
    served.stop().await;
    drop((recorder, node, trail));
    key
}

/// Opens a disk log once the stopped node's threads have let go of it.
async fn open_when_free(path: &Path) -> DiskLog {
    for _ in 0..100 {
        if let Ok(log) = DiskLog::open(path, sled_opts()) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} stays locked", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_request_log_is_detected_by_its_signed_digests() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join(REGION);
    let key = recorded_node(&dir, 10).await;
    let key = audit::parse_public_key(&key).unwrap();
    let requests_dir = dir.join(audit::REQUESTS_DIR);
    let log = open_when_free(&requests_dir).await;
    let verify = |log: &DiskLog| {
        let digests = audit::read_request_digests(&dir).unwrap();
        audit::verify_log_of(log, &digests, Some(&key), audit::REQUESTS_LOG).unwrap()
    };
    let intact = verify(&log);
    drop(log);
    assert!(intact.ok, "{intact:?}");
    assert_eq!(intact.head.seq, 10);

    // given: an attacker cuts the last 3 records (a valid chain, seqs 1..=7)
    amisim_log::edit_stored_events(&dir.join(audit::REQUESTS_DIR), |events| {
        for seq in 8..=10u64 {
            events.remove(&seq).unwrap();
        }
    })
    .unwrap();
    let cut_log = open_when_free(&requests_dir).await;
    assert_eq!(
        cut_log.verify().unwrap().seq,
        7,
        "the chain alone sees nothing"
    );
    // then: the digests signed at seq 8 (every 4) name the first missing seq
    let cut = verify(&cut_log);
    assert!(!cut.ok);
    assert_eq!(cut.first_bad_seq, Some(8), "{cut:?}");
    assert!(cut.reason.contains("truncated"), "{}", cut.reason);
    // and a state-log digest never passes for a request-log one
    let state_digests = audit::read_digests(&dir).unwrap();
    if let Some(d) = state_digests.first() {
        let mut forged = d.clone();
        forged.log = audit::REQUESTS_LOG.into();
        assert!(forged.check_signature(&key).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_keeps_to_the_retention_window_and_clamps_an_old_start() {
    const DAY: u64 = 86_400_000;
    let (node, clock) = virtual_node(Arc::new(amisim_log::MemoryLog::new()), 9);
    let recorder = RequestRecorder::start_with(
        REGION,
        Arc::new(amisim_log::MemoryLog::new()),
        RecorderOptions {
            retention: Some(Duration::from_millis(10 * DAY)),
            ..RecorderOptions::default()
        },
    )
    .unwrap();
    assert!(node.attach_requests(recorder.clone()));
    let served = Served::start(node.clone()).await;
    let mut client = AuditClient::new(served.channel().await);
    let now = node.now_ms();
    // given: a record from 20 days back and one from today
    recorder.record(call("RegisterImage", now, 1));
    clock.advance(20 * DAY);
    let later = node.now_ms();
    recorder.record(call("DeregisterImage", later, 2));
    let names = |r: amisim_proto::LookupEventsResponse| {
        r.events
            .into_iter()
            .filter(|e| e.event_type == "AwsApiCall")
            .map(|e| e.event_name)
            .collect::<Vec<_>>()
    };
    let lookup = |start: Option<u64>, end: Option<u64>| LookupEventsRequest {
        lookup_attributes: vec![LookupAttribute {
            attribute_key: "Username".into(),
            attribute_value: OWNER.into(),
        }],
        start_time_ms: start,
        end_time_ms: end,
        ..Default::default()
    };
    // then: only the recent one, with no start, and with a start older than the window
    let all = client.lookup_events(lookup(None, None)).await.unwrap();
    assert_eq!(names(all.into_inner()), ["DeregisterImage"]);
    let clamped = client
        .lookup_events(lookup(Some(now - DAY), None))
        .await
        .unwrap();
    assert_eq!(names(clamped.into_inner()), ["DeregisterImage"]);
    // a range wholly before the window is empty, not an error
    let old = client
        .lookup_events(lookup(Some(now - DAY), Some(now + DAY)))
        .await
        .unwrap();
    assert!(names(old.into_inner()).is_empty());
    // the record is still in the log (export and verify see it)
    assert_eq!(recorder.log().head().seq, 2);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_another_region_and_resolves_points() {
    let (node, _clock) = virtual_node(Arc::new(amisim_log::MemoryLog::new()), 11);
    let served = Served::start(node.clone()).await;
    let mut client = AuditClient::new(served.channel().await);
    let st = client
        .verify_log(VerifyLogRequest {
            region: "eu-west-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("InvalidRegion")
    );
    let p = client
        .resolve_point(ResolvePointRequest {
            point: None,
            region: REGION.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.last_seq, p.first_seq, p.head_seq), (0, 1, 0));
    served.stop().await;
}
