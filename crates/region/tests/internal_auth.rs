//! The internal services behind the operator token (ADR 0009): with an accounts file, `Region`
//! and `Audit` calls need `authorization: Bearer <operator token>`. No token, an ordinary
//! account's token or a wrong one is UNAUTHENTICATED `AuthFailure` and writes nothing; the
//! operator token works (and opens no `Ec2` call). Without an accounts file nothing changes.

mod common;

use std::sync::Arc;

use amisim_chaos::{Clock, VirtualClock};
use amisim_core::accounts::{AccountEntry, AccountsFile, OperatorEntry};
use amisim_core::Accounts;
use amisim_log::{EventLog, MemoryLog};
use amisim_proto::audit_client::AuditClient;
use amisim_proto::event::Payload;
use amisim_proto::saga_step::Step;
use amisim_proto::*;
use amisim_region::{RegionConfig, RegionNode};
use common::*;
use futures::StreamExt;
use tonic::Code;

const OPERATOR: &str = "tok-operator";
const SNAP: &str = "snap-0000000000000000a";
const COPY: &str = "copy-0000000000000000a";

fn accounts() -> Arc<Accounts> {
    let entry = |id: &str, token: &str| AccountEntry {
        id: id.into(),
        token: token.into(),
        organization: None,
        ou: None,
    };
    Arc::new(
        Accounts::from_file(AccountsFile {
            accounts: vec![entry(OWNER, "tok-owner"), entry(OTHER, "tok-other")],
            operator: Some(OperatorEntry {
                token: OPERATOR.into(),
            }),
            ..AccountsFile::default()
        })
        .unwrap(),
    )
}

/// A node (with or without the accounts file) whose log holds a completed snapshot of OWNER.
async fn served(accounts: Option<Arc<Accounts>>) -> Served {
    let log = Arc::new(MemoryLog::new());
    let vol = "vol-0000000000000000a";
    log.append(vec![
        envelope(T0, volume_created(vol, T0, T0)),
        envelope(
            T0,
            Payload::VolumeAvailable(VolumeAvailable {
                volume_id: vol.into(),
            }),
        ),
        envelope(
            T0,
            Payload::SnapshotCreated(SnapshotCreated {
                snapshot_id: SNAP.into(),
                owner_id: OWNER.into(),
                volume_id: vol.into(),
                volume_size: 8,
                start_time_ms: T0,
                complete_at_ms: T0,
                ..Default::default()
            }),
        ),
        envelope(
            T0,
            Payload::SnapshotCompleted(SnapshotCompleted {
                snapshot_id: SNAP.into(),
            }),
        ),
    ])
    .unwrap();
    let clock = VirtualClock::new(T0);
    let c = clock.clone();
    let cfg = RegionConfig {
        accounts,
        ..config(9)
    };
    let node = RegionNode::start_with_clock(cfg, log as Arc<dyn EventLog>, move |last| {
        c.set(last);
        Arc::new(c) as Arc<dyn Clock>
    })
    .unwrap();
    Served::start(node).await
}

/// `body` with `authorization: Bearer <token>` if a token is given.
fn with<T>(token: Option<&str>, body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// ReadCopySource of SNAP for OWNER (the first step of a copy to eu-west-1).
fn read_step() -> SagaStep {
    SagaStep {
        correlation_id: COPY.into(),
        depends_on: vec![],
        step: Some(Step::ReadCopySource(ReadCopySource {
            copy_id: COPY.into(),
            kind: "snapshot".into(),
            source_id: SNAP.into(),
            account_id: OWNER.into(),
            dest_region: "eu-west-1".into(),
            dest_id: "snap-0000000000000000b".into(),
            ..Default::default()
        })),
    }
}

fn assert_refused(st: &tonic::Status, what: &str) {
    assert_eq!(st.code(), Code::Unauthenticated, "{what}: {st:?}");
    assert_eq!(
        meta(st.metadata(), "x-amisim-error-code"),
        Some("AuthFailure"),
        "{what}"
    );
    assert!(
        st.message().starts_with("AuthFailure: "),
        "{what}: {}",
        st.message()
    );
    assert!(
        meta(st.metadata(), "x-amisim-request-id").is_some(),
        "{what}: every error names its request"
    );
}

/// Every event of the log through `Region.StreamEvents` (or its refusal).
async fn stream_all(s: &Served, token: Option<&str>) -> Result<Vec<Event>, tonic::Status> {
    let mut region = s.region().await;
    let mut stream = region
        .stream_events(with(
            token,
            StreamEventsRequest {
                from_seq: 1,
                follow: false,
            },
        ))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = stream.next().await {
        out.push(e?);
    }
    Ok(out)
}

#[tokio::test]
async fn with_an_accounts_file_the_region_service_takes_only_the_operator_token() {
    let s = served(Some(accounts())).await;
    let head = s.node.head_seq();
    let mut region = s.region().await;

    for (token, what) in [
        (None, "no token"),
        (Some("tok-owner"), "an ordinary account's token"),
        (Some("nope"), "an unknown token"),
    ] {
        let st = stream_all(&s, token).await.unwrap_err();
        assert_refused(&st, &format!("StreamEvents with {what}"));
        let st = region
            .execute_saga_step(with(token, read_step()))
            .await
            .unwrap_err();
        assert_refused(&st, &format!("ExecuteSagaStep with {what}"));
        let st = region
            .get_region_info(with(token, GetRegionInfoRequest {}))
            .await
            .unwrap_err();
        assert_refused(&st, &format!("GetRegionInfo with {what}"));
        let st = region
            .get_state_digest(with(token, GetStateDigestRequest { replay: false }))
            .await
            .unwrap_err();
        assert_refused(&st, &format!("GetStateDigest with {what}"));
    }
    // `x-amisim-account` is no credential either.
    let mut r = with(None, read_step());
    r.metadata_mut()
        .insert("x-amisim-account", OWNER.parse().unwrap());
    assert_refused(
        &region.execute_saga_step(r).await.unwrap_err(),
        "ExecuteSagaStep with x-amisim-account",
    );
    assert_eq!(s.node.head_seq(), head, "a refused step writes nothing");

    // The operator token opens every RPC.
    let events = stream_all(&s, Some(OPERATOR)).await.unwrap();
    assert_eq!(events.len() as u64, head);
    let info = region
        .get_region_info(with(Some(OPERATOR), GetRegionInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.region.as_str(), info.head_seq), (REGION, head));
    let r = region
        .execute_saga_step(with(Some(OPERATOR), read_step()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, "read");
    assert_eq!(
        s.node.head_seq(),
        head + 1,
        "the step wrote its CopySourceRead"
    );
    let d = region
        .get_state_digest(with(Some(OPERATOR), GetStateDigestRequest { replay: true }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.digest, d.replay_digest);

    // The operator is no account: its token opens no Ec2 call.
    let mut ec2 = s.ec2().await;
    let st = ec2
        .describe_snapshots(with(Some(OPERATOR), DescribeSnapshotsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    // Health stays open (generic tools probe it without credentials).
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "amisim.v1.Region".into(),
        })
        .await
        .unwrap();
    s.stop().await;
}

#[tokio::test]
async fn with_an_accounts_file_the_audit_service_takes_only_the_operator_token() {
    let s = served(Some(accounts())).await;
    let mut audit = AuditClient::new(s.channel().await);
    let as_of = |account: Option<&str>, token: Option<&str>| {
        let mut r = with(
            token,
            DescribeSnapshotsAsOfRequest {
                as_of: None,
                request: Some(DescribeSnapshotsRequest {
                    snapshot_ids: vec![SNAP.into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        if let Some(a) = account {
            r.metadata_mut()
                .insert("x-amisim-account", a.parse().unwrap());
        }
        r
    };
    for (token, what) in [
        (None, "no token"),
        (Some("tok-owner"), "an account's token"),
    ] {
        let st = audit
            .verify_log(with(token, VerifyLogRequest::default()))
            .await
            .unwrap_err();
        assert_refused(&st, &format!("VerifyLog with {what}"));
        let st = match audit
            .stream_events(with(token, AuditStreamRequest::default()))
            .await
        {
            Err(st) => st,
            Ok(r) => r.into_inner().next().await.unwrap().unwrap_err(),
        };
        assert_refused(&st, &format!("Audit.StreamEvents with {what}"));
        let st = audit
            .describe_snapshots_as_of(as_of(Some(OWNER), token))
            .await
            .unwrap_err();
        assert_refused(&st, &format!("DescribeSnapshotsAsOf with {what}"));
    }

    let report = audit
        .verify_log(with(Some(OPERATOR), VerifyLogRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(report.ok, "{report:?}");
    let mut stream = audit
        .stream_events(with(Some(OPERATOR), AuditStreamRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(e) = stream.next().await {
        e.unwrap();
        n += 1;
    }
    assert_eq!(n, s.node.head_seq());
    // As-of reads: the operator reads as the account named by x-amisim-account.
    let owner = audit
        .describe_snapshots_as_of(as_of(Some(OWNER), Some(OPERATOR)))
        .await
        .unwrap()
        .into_inner();
    let snaps = owner.response.unwrap_or_default().snapshots;
    assert_eq!(snaps.len(), 1);
    let other = audit
        .describe_snapshots_as_of(as_of(Some(OTHER), Some(OPERATOR)))
        .await
        .map(|r| r.into_inner().response.unwrap_or_default().snapshots);
    assert!(
        !matches!(&other, Ok(s) if !s.is_empty()),
        "another account does not see OWNER's snapshot: {other:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn without_an_accounts_file_the_internal_services_stay_open() {
    let s = served(None).await;
    let head = s.node.head_seq();
    assert_eq!(stream_all(&s, None).await.unwrap().len() as u64, head);
    let mut region = s.region().await;
    let r = region
        .execute_saga_step(with(None, read_step()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, "read");
    let mut audit = AuditClient::new(s.channel().await);
    assert!(
        audit
            .verify_log(with(None, VerifyLogRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .ok
    );
    s.stop().await;
}
