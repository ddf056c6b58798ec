//! The simulation's timing model and quotas (EC2_SEMANTICS.md §6, §10.2), as one configurable
//! struct with documented defaults. Durations are simulated milliseconds.

use serde::{Deserialize, Serialize};

use crate::error::{Ec2Error, Ec2Result, ErrorCode};

const GIB: u64 = 1024 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// RegisterImage with completed snapshots: pending → available (2 s).
    pub register_ebs_ms: u64,
    /// RegisterImage from an S3 manifest (30 s).
    pub register_s3_ms: u64,
    /// CreateSnapshot fixed part (15 s) ...
    pub snapshot_base_ms: u64,
    /// ... plus bytes at this rate (150 MiB/s).
    pub snapshot_bytes_per_s: u64,
    /// CreateImage with `no_reboot=false`: shutdown and restart before the snapshots (60 s).
    pub create_image_reboot_ms: u64,
    /// CreateVolume: creating → available (2 s).
    pub volume_create_ms: u64,
    /// RunInstances: pending → running (10 s).
    pub instance_start_ms: u64,
    /// StopInstances: stopping → stopped (10 s).
    pub instance_stop_ms: u64,
    /// TerminateInstances: shutting-down → terminated (10 s).
    pub instance_terminate_ms: u64,
    /// How long a deregistered image stays visible (1 h).
    pub deregistered_linger_ms: u64,
    /// AMIs per account (pending, disabled included): 50,000.
    pub max_images: usize,
    /// Snapshots per account: 100,000.
    pub max_snapshots: usize,
    /// Pending snapshots per account (`[unconfirmed]` default): 100.
    pub max_pending_snapshots: usize,
    /// Minimum spacing of snapshots of one volume (15 s).
    pub snapshot_spacing_ms: u64,
    /// Volumes per account (`[sim]`): 5,000.
    pub max_volumes: usize,
    /// Instances per account, not terminated (`[sim]`): 1,000.
    pub max_instances: usize,
    /// Concurrent CreateImage with no_reboot per account (`[sim]`): 100.
    pub max_concurrent_no_reboot: usize,
    /// Regions a copy may name as its source (else `InvalidRegion`): the simulated regions.
    pub known_regions: Vec<String>,
    /// Copies in flight into a region per account (20). [sim, unconfirmed] pending snapshot
    /// copies and pending image copies share these slots, one slot per copy.
    pub max_copies_in_flight: usize,
    /// Copy in the same account, region and encryption: metadata only (5 s).
    pub copy_metadata_ms: u64,
    /// Same-region copy that moves data (re-encryption, other account): 30 s ...
    pub copy_local_base_ms: u64,
    /// ... plus bytes at this rate (150 MiB/s).
    pub copy_local_bytes_per_s: u64,
    /// Cross-region copy without link parameters: 60 s ...
    pub copy_remote_base_ms: u64,
    /// ... plus bytes at this rate (75 MiB/s).
    pub copy_remote_bytes_per_s: u64,
    /// Fastest a time-based copy moves one snapshot (500 MiB/s).
    pub copy_time_based_bytes_per_s: u64,
    /// A copied image turns `available` this long after its last snapshot completes (10 s).
    pub copy_image_available_delay_ms: u64,
    /// Public AMIs per account (`[unconfirmed]` `ResourceLimitExceeded`): 5.
    pub max_public_images: usize,
    /// Grantees per AMI: accounts, organizations and OUs, each counting once
    /// (`[unconfirmed]` `ResourceLimitExceeded`): 1,000.
    pub max_launch_permissions: usize,
    /// EnableImageBlockPublicAccess applies after this long (EC2: up to 10 min; `[sim]` 0).
    pub image_block_public_access_delay_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            register_ebs_ms: 2_000,
            register_s3_ms: 30_000,
            snapshot_base_ms: 15_000,
            snapshot_bytes_per_s: 150 * MIB,
            create_image_reboot_ms: 60_000,
            volume_create_ms: 2_000,
            instance_start_ms: 10_000,
            instance_stop_ms: 10_000,
            instance_terminate_ms: 10_000,
            deregistered_linger_ms: 3_600_000,
            max_images: 50_000,
            max_snapshots: 100_000,
            max_pending_snapshots: 100,
            snapshot_spacing_ms: 15_000,
            max_volumes: 5_000,
            max_instances: 1_000,
            max_concurrent_no_reboot: 100,
            known_regions: ["us-east-1", "eu-west-1", "ap-south-1"]
                .map(String::from)
                .to_vec(),
            max_copies_in_flight: 20,
            copy_metadata_ms: 5_000,
            copy_local_base_ms: 30_000,
            copy_local_bytes_per_s: 150 * MIB,
            copy_remote_base_ms: 60_000,
            copy_remote_bytes_per_s: 75 * MIB,
            copy_time_based_bytes_per_s: 500 * MIB,
            copy_image_available_delay_ms: 10_000,
            max_public_images: 5,
            max_launch_permissions: 1_000,
            image_block_public_access_delay_ms: 0,
        }
    }
}

impl Config {
    /// Duration of a CreateSnapshot moving `bytes`: 15 s + bytes ÷ 150 MiB/s.
    pub fn snapshot_ms(&self, bytes: u64) -> u64 {
        self.snapshot_base_ms + bytes.saturating_mul(1000) / self.snapshot_bytes_per_s.max(1)
    }

    /// True if `region` is one of the simulated regions.
    pub fn is_known_region(&self, region: &str) -> bool {
        self.known_regions.iter().any(|r| r == region)
    }

    /// `InvalidRegion` unless `region` is one of the simulated regions. `[unconfirmed]` wording.
    pub fn check_region(&self, region: &str) -> Ec2Result<()> {
        if self.is_known_region(region) {
            Ok(())
        } else {
            Err(Ec2Error::new(
                ErrorCode::InvalidRegion,
                format!("The region '{region}' does not exist."),
            ))
        }
    }
}

/// GiB to bytes.
pub fn gib(size: i32) -> u64 {
    size.max(0) as u64 * GIB
}

/// Progress of a transition as EC2 shows it: `(now − start) ÷ (due − start)`, floored to a whole
/// percent, capped at 99 % until the completion event (EC2_SEMANTICS.md §10.2).
pub fn progress_percent(start_ms: u64, due_ms: u64, now_ms: u64) -> u32 {
    if due_ms <= start_ms {
        return 99;
    }
    let done = now_ms.saturating_sub(start_ms) as u128 * 100 / (due_ms - start_ms) as u128;
    done.min(99) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_of_8_gib_takes_about_70_s() {
        let c = Config::default();
        assert_eq!(c.snapshot_ms(gib(8)), 15_000 + 54_613);
    }

    #[test]
    fn progress_is_floored_and_capped() {
        assert_eq!(progress_percent(0, 1000, 0), 0);
        assert_eq!(progress_percent(0, 1000, 429), 42);
        assert_eq!(progress_percent(0, 1000, 5000), 99);
    }
}
