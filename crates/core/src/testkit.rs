//! Given / when / then for the domain: a tiny in-memory region that decides, logs and applies,
//! so tests read as "given these events, when this command, then these events (or this error)".

use amisim_proto::event::Payload;
use amisim_proto::Event;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::*;

pub const OWNER: &str = "111122223333";
pub const OTHER: &str = "444455556666";
pub const REGION: &str = "us-east-1";
/// 2024-05-01T00:00:00Z.
pub const T0: u64 = 1_714_521_600_000;

pub struct Harness {
    /// The region this harness simulates ([`REGION`] unless made with [`Harness::in_region`]).
    pub region: &'static str,
    pub state: State,
    pub log: Vec<Event>,
    pub now_ms: u64,
    pub rng: ChaCha8Rng,
    pub config: Config,
    /// Organization membership the decisions and reads see (empty unless a test sets it).
    pub membership: Membership,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        Self::in_region(REGION, 42)
    }

    /// A harness for another region (cross-region tests use one per region), with its own seed.
    pub fn in_region(region: &'static str, seed: u64) -> Self {
        Harness {
            region,
            state: State::new(),
            log: Vec::new(),
            now_ms: T0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            config: Config::default(),
            membership: Membership::new(),
        }
    }

    /// Given: appends and applies events as if they had been logged.
    pub fn given(&mut self, events: impl IntoIterator<Item = Payload>) -> &mut Self {
        for p in events {
            self.append(p);
        }
        self
    }

    fn append(&mut self, p: Payload) {
        let ev = Event {
            seq: self.log.len() as u64 + 1,
            region: self.region.into(),
            sim_time_ms: self.now_ms,
            payload: Some(p),
            ..Default::default()
        };
        self.state.apply(&ev);
        self.log.push(ev);
    }

    /// When: decides `cmd` as `account`; on success logs and applies its events. A tick is
    /// also fired by [`crate::tick::reference_tick_into`] (the plain rescan-from-the-start
    /// algorithm) on a copy, and must fire the same events: every test that moves time checks
    /// the writer's faster one against it.
    pub fn when(&mut self, account: &str, cmd: Command) -> Ec2Result<Decision> {
        let reference = matches!(cmd, Command::Tick).then(|| {
            let mut rng = self.rng.clone();
            let mut ctx = Ctx::new(self.region, account, self.now_ms, &mut rng, &self.config)
                .with_membership(&self.membership);
            let mut copy = self.state.clone();
            crate::tick::reference_tick_into(&mut copy, &mut ctx)
        });
        let mut ctx = Ctx::new(
            self.region,
            account,
            self.now_ms,
            &mut self.rng,
            &self.config,
        )
        .with_membership(&self.membership);
        let d = decide(&self.state, &mut ctx, cmd)?;
        if let Some(reference) = reference {
            assert_eq!(
                d.events, reference,
                "tick_into and the reference tick differ"
            );
        }
        for e in d.events.clone() {
            self.append(e);
        }
        Ok(d)
    }

    /// Decides without logging (to check that an error wrote nothing, or to inspect events).
    pub fn try_decide(&mut self, account: &str, cmd: Command) -> Ec2Result<Decision> {
        let mut ctx = Ctx::new(
            self.region,
            account,
            self.now_ms,
            &mut self.rng,
            &self.config,
        )
        .with_membership(&self.membership);
        decide(&self.state, &mut ctx, cmd)
    }

    /// Moves simulated time forward and fires due timers; returns the fired events.
    pub fn advance(&mut self, ms: u64) -> Vec<Payload> {
        self.now_ms += ms;
        self.when(ids::SYSTEM_ACCOUNT, Command::Tick)
            .map(|d| d.events)
            .unwrap_or_default()
    }

    /// Reads as `account`.
    pub fn read(&self, account: &str, q: Query) -> Ec2Result<Answer> {
        let ctx = ReadCtx::new(self.region, account, self.now_ms).with_membership(&self.membership);
        query(&self.state, &ctx, q)
    }

    /// Then: a replay of the log from 1 equals the live state.
    pub fn assert_replay_equals_live(&self) {
        let mut s = State::new();
        for e in &self.log {
            s.apply(e);
        }
        assert_eq!(s, self.state);
        assert_eq!(s.digest(), self.state.digest());
    }
}

/// A `KmsKeyCreated` event: an enabled symmetric key `key_id` of `owner` in `region`, usable
/// also by `policy` accounts. Returns its key ARN too.
pub fn kms_key(region: &str, owner: &str, key_id: &str, policy: &[&str]) -> (Payload, String) {
    let arn = crate::kms::key_arn(region, owner, key_id);
    let p = Payload::KmsKeyCreated(amisim_proto::KmsKeyCreated {
        key_id: key_id.into(),
        owner_id: owner.into(),
        arn: arn.clone(),
        key_usage: crate::kms::KEY_USAGE.into(),
        key_spec: crate::kms::KEY_SPEC.into(),
        policy_account_ids: policy.iter().map(|a| a.to_string()).collect(),
        creation_date_ms: T0,
        ..Default::default()
    });
    (p, arn)
}

/// The error code of a result (panics with the value if it succeeded).
pub fn code<T: std::fmt::Debug>(r: Ec2Result<T>) -> ErrorCode {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code,
    }
}
