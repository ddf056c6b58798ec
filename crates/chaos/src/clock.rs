//! Simulated time (DESIGN.md §5). Every simulated duration in amisim (a snapshot taking 70 s, a
//! volume becoming available) is measured on a [`Clock`], never on the machine's clock, so a run
//! can be sped up or stepped by hand.
//!
//! - [`ScaledClock`]: simulated time flows `scale` times faster than wall time (default 60: a
//!   simulated minute per wall second). Made so a restarted node never goes back in time.
//! - [`VirtualClock`]: time moves only when [`VirtualClock::advance`] says so; with a seeded RNG,
//!   an experiment is then exactly reproducible.
//! - [`SkewedClock`]: one node's view of a shared clock, plus a skew (node faults: per-region
//!   clock skew) and a freeze (a paused node's timers stand still). Never goes backwards.
//!
//! Times are milliseconds since the Unix epoch in simulated time, like every `*_ms` field of the
//! event log.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A source of simulated time.
///
/// A component that waits for a simulated instant (the region's timer loop) asks
/// [`Clock::wall_ms_until`] how long to sleep, and, when [`Clock::changes`] offers a receiver,
/// also wakes up whenever the clock is moved by hand.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Simulated now, ms since the Unix epoch. Never decreases.
    fn now_ms(&self) -> u64;

    /// How long, in wall time, until simulated time reaches `sim_ms`: zero if it already has;
    /// [`Duration::MAX`] if wall time alone never gets there (a virtual clock that nobody
    /// advances).
    fn wall_ms_until(&self, sim_ms: u64) -> Duration;

    /// A receiver that changes whenever the clock jumps by hand (a virtual clock's `advance`), so
    /// a waiter re-reads [`Clock::now_ms`]. `None` for clocks that only flow with wall time: for
    /// them [`Clock::wall_ms_until`] is exact.
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// The clock as a [`VirtualClock`] if it is one: only those can be moved by hand (the
    /// `AdvanceClock` RPCs).
    fn as_virtual(&self) -> Option<&VirtualClock> {
        None
    }

    /// The clock as a [`SkewedClock`] if it is one: only those take a skew (the
    /// `SetClockSkew` RPCs).
    fn as_skewed(&self) -> Option<&SkewedClock> {
        None
    }
}

/// Wall-clock ms since the Unix epoch (0 if the machine's clock is before 1970). Informational
/// only: it goes into an event's `wall_time_ms`, never into a decision.
pub fn wall_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Simulated time = `origin_sim + (wall time elapsed since creation) × scale`.
///
/// `origin_sim` is the larger of the wall clock now and `start_at_least_ms`: a node restarted on
/// an old log passes the sim time of its last event, so its new events never predate old ones
/// even when it ran at a high scale and got ahead of the wall clock. It measures elapsed time on
/// the monotonic clock, so it never goes backwards when the machine's clock is adjusted.
#[derive(Debug, Clone)]
pub struct ScaledClock {
    origin_wall: Instant,
    origin_sim_ms: u64,
    scale: f64,
}

impl ScaledClock {
    /// The default speed-up: one simulated minute per wall second, so an 8 GiB snapshot (about
    /// 70 simulated seconds) takes just over a wall second.
    pub const DEFAULT_SCALE: f64 = 60.0;

    /// A clock running `scale` times faster than wall time, starting now, but not before
    /// `start_at_least_ms`. `scale` must be finite and positive (see [`ScaledClock::valid_scale`]);
    /// anything else is taken as 1 (real time) rather than freezing or reversing time.
    pub fn new(scale: f64, start_at_least_ms: u64) -> Self {
        let scale = if Self::valid_scale(scale) { scale } else { 1.0 };
        ScaledClock {
            origin_wall: Instant::now(),
            origin_sim_ms: wall_now_ms().max(start_at_least_ms),
            scale,
        }
    }

    /// True for a usable scale: finite and greater than zero.
    pub fn valid_scale(scale: f64) -> bool {
        scale.is_finite() && scale > 0.0
    }

    /// The speed-up factor.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Simulated ms elapsed since creation (floored).
    fn sim_elapsed_ms(&self) -> u64 {
        let wall_ns = self.origin_wall.elapsed().as_nanos() as f64;
        // `as` saturates for floats out of range, so an absurd scale stops at u64::MAX.
        (wall_ns * self.scale / 1e6) as u64
    }
}

impl Clock for ScaledClock {
    fn now_ms(&self) -> u64 {
        self.origin_sim_ms.saturating_add(self.sim_elapsed_ms())
    }

    fn wall_ms_until(&self, sim_ms: u64) -> Duration {
        if sim_ms <= self.now_ms() {
            return Duration::ZERO;
        }
        let target_ns = ((sim_ms - self.origin_sim_ms) as f64 * 1e6 / self.scale).ceil();
        let elapsed_ns = self.origin_wall.elapsed().as_nanos() as f64;
        let wait_ns = (target_ns - elapsed_ns).max(0.0);
        // Float rounding may leave us a hair short of `sim_ms`; never answer zero for an instant
        // not yet reached, so a waiter sleeps a little instead of spinning.
        Duration::from_secs_f64(wait_ns / 1e9)
            .max(Duration::from_micros(1))
            .min(Duration::from_secs(u32::MAX as u64))
    }
}

/// Simulated time that moves only when told ([`VirtualClock::advance`], [`VirtualClock::set`]).
///
/// Waiters learn about each move through [`Clock::changes`]. Cloning shares the clock.
#[derive(Clone)]
pub struct VirtualClock {
    now: std::sync::Arc<watch::Sender<u64>>,
}

impl VirtualClock {
    /// A clock standing at `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        let (tx, _) = watch::channel(start_ms);
        VirtualClock {
            now: std::sync::Arc::new(tx),
        }
    }

    /// Moves time forward by `ms`; returns the new now.
    pub fn advance(&self, ms: u64) -> u64 {
        let mut now = 0;
        self.now.send_modify(|t| {
            *t = t.saturating_add(ms);
            now = *t;
        });
        now
    }

    /// Moves time forward to `ms` (never backwards: an earlier `ms` is ignored); returns the new
    /// now.
    pub fn set(&self, ms: u64) -> u64 {
        let mut now = 0;
        self.now.send_modify(|t| {
            *t = (*t).max(ms);
            now = *t;
        });
        now
    }
}

impl fmt::Debug for VirtualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualClock")
            .field("now_ms", &*self.now.borrow())
            .finish()
    }
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> u64 {
        *self.now.borrow()
    }

    fn wall_ms_until(&self, sim_ms: u64) -> Duration {
        if sim_ms <= self.now_ms() {
            Duration::ZERO
        } else {
            Duration::MAX
        }
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.now.subscribe())
    }

    fn as_virtual(&self) -> Option<&VirtualClock> {
        Some(self)
    }
}

/// A node's own view of a shared base clock: `base + skew`, never going backwards, and able to
/// stand still while the node is paused (per-region clock skew and pause, issue 6).
///
/// - **Skew** ([`SkewedClock::set_skew_ms`]) is simulated ms added to the base reading; it can
///   change while the node runs. A positive skew puts the node ahead at once (timers due in the
///   skipped span fire). A **negative** skew does not move the node back: its readings stand
///   still until `base + skew` catches up with the latest reading it already gave, then follow
///   `base + skew` again (the node's events keep increasing `sim_time_ms`; timers due in the
///   held span wait for the base to catch up). Readings are `u64`: `base + skew` stops at 0 and
///   `u64::MAX`.
/// - **Frozen** ([`SkewedClock::freeze`]): readings stand at the instant of the freeze and no
///   timer comes due; [`SkewedClock::thaw`] returns to `base + skew`, which has moved on
///   meanwhile (as a process resumed after SIGSTOP finds the time later).
///
/// Waiters are woken ([`Clock::changes`]) when the base is moved by hand, and when the skew or
/// the freeze changes. It is a [`VirtualClock`] for [`Clock::as_virtual`] if its base is one:
/// moving it by hand moves the shared base. Cloning shares the skew and the freeze.
#[derive(Clone)]
pub struct SkewedClock {
    base: std::sync::Arc<dyn Clock>,
    inner: std::sync::Arc<SkewInner>,
}

#[derive(Debug)]
struct SkewInner {
    skew_ms: std::sync::atomic::AtomicI64,
    /// The latest reading given: readings never go below it.
    floor_ms: std::sync::atomic::AtomicU64,
    frozen: std::sync::atomic::AtomicBool,
    /// Bumped on every skew/freeze change and every move of the base by hand.
    changes: watch::Sender<u64>,
}

impl SkewInner {
    fn bump(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }
}

impl SkewedClock {
    /// `base` with no skew, running. Inside a tokio runtime it forwards the base's own changes
    /// (a virtual clock moved by hand) to its waiters; outside one, only its own.
    pub fn new(base: std::sync::Arc<dyn Clock>) -> Self {
        let (changes, _) = watch::channel(0);
        let inner = std::sync::Arc::new(SkewInner {
            skew_ms: std::sync::atomic::AtomicI64::new(0),
            floor_ms: std::sync::atomic::AtomicU64::new(0),
            frozen: std::sync::atomic::AtomicBool::new(false),
            changes,
        });
        if let (Some(mut rx), Ok(rt)) = (base.changes(), tokio::runtime::Handle::try_current()) {
            let weak = std::sync::Arc::downgrade(&inner);
            rt.spawn(async move {
                while rx.changed().await.is_ok() {
                    match weak.upgrade() {
                        Some(inner) => inner.bump(),
                        None => return,
                    }
                }
            });
        }
        SkewedClock { base, inner }
    }

    /// The skew now, simulated ms.
    pub fn skew_ms(&self) -> i64 {
        self.inner.skew_ms.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Sets the skew (see the type's docs for a negative one) and wakes the waiters.
    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.inner
            .skew_ms
            .store(skew_ms, std::sync::atomic::Ordering::SeqCst);
        self.inner.bump();
    }

    /// Stops the clock at its current reading until [`SkewedClock::thaw`].
    pub fn freeze(&self) {
        // Read first, so the floor holds the frozen instant.
        let _ = self.now_ms();
        self.inner
            .frozen
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.bump();
    }

    /// Lets the clock follow its base again.
    pub fn thaw(&self) {
        self.inner
            .frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.inner.bump();
    }

    /// True while frozen.
    pub fn is_frozen(&self) -> bool {
        self.inner.frozen.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The clock this one skews.
    pub fn base(&self) -> &std::sync::Arc<dyn Clock> {
        &self.base
    }

    /// `base + skew`, saturating at 0 and `u64::MAX`.
    fn skewed(&self, base_ms: u64) -> u64 {
        let v = i128::from(base_ms) + i128::from(self.skew_ms());
        v.clamp(0, i128::from(u64::MAX)) as u64
    }
}

impl fmt::Debug for SkewedClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkewedClock")
            .field("base", &self.base)
            .field("skew_ms", &self.skew_ms())
            .field("frozen", &self.is_frozen())
            .finish()
    }
}

impl Clock for SkewedClock {
    fn now_ms(&self) -> u64 {
        use std::sync::atomic::Ordering;
        if self.is_frozen() {
            return self.inner.floor_ms.load(Ordering::SeqCst);
        }
        let v = self.skewed(self.base.now_ms());
        let prev = self.inner.floor_ms.fetch_max(v, Ordering::SeqCst);
        prev.max(v)
    }

    fn wall_ms_until(&self, sim_ms: u64) -> Duration {
        if self.is_frozen() {
            return if sim_ms <= self.now_ms() {
                Duration::ZERO
            } else {
                Duration::MAX
            };
        }
        if sim_ms <= self.now_ms() {
            return Duration::ZERO;
        }
        // The base instant at which `base + skew` reaches `sim_ms`.
        let base_target = i128::from(sim_ms) - i128::from(self.skew_ms());
        let base_target = base_target.clamp(0, i128::from(u64::MAX)) as u64;
        self.base
            .wall_ms_until(base_target)
            .max(Duration::from_micros(1))
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.changes.subscribe())
    }

    fn as_virtual(&self) -> Option<&VirtualClock> {
        self.base.as_virtual()
    }

    fn as_skewed(&self) -> Option<&SkewedClock> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-05-01T00:00:00Z.
    const T0: u64 = 1_714_521_600_000;

    #[test]
    fn scaled_clock_starts_at_wall_time_or_later() {
        let before = wall_now_ms();
        let c = ScaledClock::new(1.0, 0);
        assert!(c.now_ms() >= before);

        // A restarted node passes its last event's time, which may lie in the wall clock's future.
        let ahead = wall_now_ms() + 3_600_000;
        let c = ScaledClock::new(60.0, ahead);
        assert!(c.now_ms() >= ahead);
    }

    #[test]
    fn scaled_clock_runs_scale_times_faster_and_never_backwards() {
        let c = ScaledClock::new(1000.0, 0);
        let t0 = c.now_ms();
        std::thread::sleep(Duration::from_millis(20));
        let t1 = c.now_ms();
        assert!(t1 - t0 >= 20_000, "advanced only {} sim ms", t1 - t0);
        let mut last = t1;
        for _ in 0..1000 {
            let t = c.now_ms();
            assert!(t >= last);
            last = t;
        }
    }

    #[test]
    fn wall_wait_is_the_sim_distance_divided_by_the_scale() {
        let c = ScaledClock::new(1000.0, 0);
        let now = c.now_ms();
        assert_eq!(c.wall_ms_until(now), Duration::ZERO);
        assert_eq!(c.wall_ms_until(now.saturating_sub(5_000)), Duration::ZERO);
        // 10,000 simulated seconds at 1000× are 10 wall seconds (less what already elapsed).
        let w = c.wall_ms_until(now + 10_000_000);
        assert!(w <= Duration::from_secs(10), "{w:?}");
        assert!(w >= Duration::from_secs(9), "{w:?}");
        // Sleeping that long gets there.
        let target = c.now_ms() + 3_000;
        std::thread::sleep(c.wall_ms_until(target));
        assert!(c.now_ms() >= target);
    }

    #[test]
    fn a_bad_scale_means_real_time() {
        for s in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(!ScaledClock::valid_scale(s));
            assert_eq!(ScaledClock::new(s, 0).scale(), 1.0);
        }
        assert!(ScaledClock::valid_scale(0.5));
    }

    #[test]
    fn virtual_clock_moves_only_when_told_and_notifies() {
        let c = VirtualClock::new(T0);
        let mut changes = c.changes().expect("a virtual clock notifies");
        assert_eq!(c.now_ms(), T0);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(c.now_ms(), T0);
        assert_eq!(c.wall_ms_until(T0 + 1), Duration::MAX);
        assert_eq!(c.wall_ms_until(T0), Duration::ZERO);

        assert_eq!(c.advance(1_500), T0 + 1_500);
        assert!(changes.has_changed().unwrap_or(false));
        assert_eq!(*changes.borrow_and_update(), T0 + 1_500);
        assert_eq!(c.wall_ms_until(T0 + 1), Duration::ZERO);

        // Never backwards.
        assert_eq!(c.set(T0), T0 + 1_500);
        assert_eq!(c.set(T0 + 10_000), T0 + 10_000);
        let shared = c.clone();
        shared.advance(1);
        assert_eq!(c.now_ms(), T0 + 10_001);
    }

    #[test]
    fn scaled_clocks_do_not_notify() {
        assert!(ScaledClock::new(60.0, 0).changes().is_none());
    }

    #[test]
    fn a_skewed_clock_reads_base_plus_skew_and_never_goes_back() {
        let base = VirtualClock::new(T0);
        let c = SkewedClock::new(std::sync::Arc::new(base.clone()));
        let mut changes = c.changes().expect("a skewed clock notifies");
        assert_eq!(c.now_ms(), T0);
        c.set_skew_ms(5_000);
        assert!(changes.has_changed().unwrap_or(false));
        changes.borrow_and_update();
        assert_eq!(c.now_ms(), T0 + 5_000);
        assert_eq!(c.wall_ms_until(T0 + 5_000), Duration::ZERO);
        assert_eq!(c.wall_ms_until(T0 + 5_001), Duration::MAX);
        base.advance(1_000);
        assert_eq!(c.now_ms(), T0 + 6_000);
        // Back to a negative skew: the reading holds until base - 2 s passes it.
        c.set_skew_ms(-2_000);
        assert_eq!(c.now_ms(), T0 + 6_000);
        base.advance(7_000); // base T0 + 8 s: base - 2 s = T0 + 6 s
        assert_eq!(c.now_ms(), T0 + 6_000);
        base.advance(1_000);
        assert_eq!(c.now_ms(), T0 + 7_000);
        assert_eq!(c.skew_ms(), -2_000);
        // Moving it by hand moves the shared base.
        c.as_virtual().expect("virtual base").advance(1_000);
        assert_eq!(base.now_ms(), T0 + 10_000);
        assert_eq!(c.now_ms(), T0 + 8_000);
    }

    #[test]
    fn a_frozen_clock_stands_still_and_thaws_to_where_the_base_is() {
        let base = VirtualClock::new(T0);
        let c = SkewedClock::new(std::sync::Arc::new(base.clone()));
        c.freeze();
        base.advance(10_000);
        assert_eq!(c.now_ms(), T0);
        assert_eq!(c.wall_ms_until(T0 + 1), Duration::MAX);
        c.thaw();
        assert_eq!(c.now_ms(), T0 + 10_000);

        let scaled = SkewedClock::new(std::sync::Arc::new(ScaledClock::new(1000.0, 0)));
        scaled.set_skew_ms(3_600_000);
        assert!(scaled.now_ms() >= wall_now_ms() + 3_600_000);
        let target = scaled.now_ms() + 2_000;
        std::thread::sleep(scaled.wall_ms_until(target));
        assert!(scaled.now_ms() >= target);
    }
}
