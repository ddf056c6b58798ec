//! [`Hold`]: a switch that stops the coordinator's own background work (followers ingesting,
//! the saga driver looking and stepping) while it is on, as SIGSTOP stops a coordinator
//! process. A lab cluster turns it on when it pauses an in-process coordinator, so a paused
//! coordinator behaves the same in process and as a child process: its callers wait at its
//! gate, and nothing of it moves.

use tokio::sync::watch;

/// Held while the value is `true`. `None` (the default everywhere): never held.
pub type Hold = Option<watch::Receiver<bool>>;

/// Returns at once when not held; otherwise waits until the hold is released (or its sender is
/// gone, which releases it for good).
pub async fn while_held(hold: &mut Hold) {
    let Some(rx) = hold else { return };
    if rx.wait_for(|held| !*held).await.is_err() {
        // The switch is gone: nobody can hold this any more.
        *hold = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_held_switch_waits_until_released() {
        let (tx, rx) = watch::channel(true);
        let mut hold: Hold = Some(rx);
        let waited = tokio::time::timeout(Duration::from_millis(50), while_held(&mut hold)).await;
        assert!(waited.is_err(), "held: still waiting");
        tx.send_replace(false);
        tokio::time::timeout(Duration::from_secs(5), while_held(&mut hold))
            .await
            .expect("released: returns");
        drop(tx);
        // A switch dropped while on releases for good.
        let (tx, rx) = watch::channel(true);
        let mut gone: Hold = Some(rx);
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), while_held(&mut gone))
            .await
            .expect("a dropped switch releases");
        assert!(gone.is_none(), "and is forgotten");
        let mut never: Hold = None;
        while_held(&mut never).await;
    }
}
