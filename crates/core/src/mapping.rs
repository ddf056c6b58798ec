//! Volume parameters and block device mappings (EC2_SEMANTICS.md §2.4), shared by
//! CreateVolume, RegisterImage, CreateImage and RunInstances.

use amisim_proto::{BlockDeviceMapping, EbsBlockDevice};

use crate::error::{Ec2Error, Ec2Result, ErrorCode};
use crate::ids;
use crate::state::Mapping;

/// EBS volume types and their size ranges (GiB).
pub const VOLUME_TYPES: &[(&str, i32, i32)] = &[
    ("gp2", 1, 16_384),
    ("gp3", 1, 65_536),
    ("io1", 4, 16_384),
    ("io2", 4, 65_536),
    ("st1", 125, 16_384),
    ("sc1", 125, 16_384),
    ("standard", 1, 1_024),
];

/// Resolved EBS volume parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeParams {
    pub volume_type: String,
    pub size: i32,
    pub iops: i32,
    pub throughput: i32,
}

/// Checks and resolves volume parameters. `size` is the requested size, `snapshot_size` the
/// size of the source snapshot if any (then the size defaults to it and may not be smaller).
/// Errors use `code` (`InvalidParameterValue` for CreateVolume, `InvalidBlockDeviceMapping` in
/// mappings), except IOPS/throughput combination errors.
pub fn volume_params(
    volume_type: &str,
    default_type: &str,
    size: Option<i32>,
    snapshot: Option<(&str, i32)>,
    iops: Option<i32>,
    throughput: Option<i32>,
    code: ErrorCode,
) -> Ec2Result<VolumeParams> {
    let vt = if volume_type.is_empty() {
        default_type
    } else {
        volume_type
    };
    let Some(&(_, min, max)) = VOLUME_TYPES.iter().find(|(t, _, _)| *t == vt) else {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            format!(
                "Value ({vt}) for parameter volumeType is invalid. Valid values: gp2, gp3, io1, io2, st1, sc1, standard"
            ),
        ));
    };
    let size = match (size, snapshot) {
        (Some(s), Some((snap_id, snap_size))) if s < snap_size => {
            return Err(Ec2Error::new(
                code,
                format!(
                    "Volume of size {s}GB is smaller than snapshot '{snap_id}', expect size >= {snap_size}GB"
                ),
            ))
        }
        (Some(s), _) => s,
        (None, Some((_, snap_size))) => snap_size,
        (None, None) => return Err(Ec2Error::missing("size")),
    };
    if size < min || size > max {
        return Err(Ec2Error::new(
            code,
            format!("Volume size {size}GiB is out of range for volume type {vt}: must be {min}-{max} GiB"),
        ));
    }
    let iops = match (vt, iops) {
        ("gp3", None) => 3_000,
        ("gp3", Some(i)) if (3_000..=80_000).contains(&i) => i,
        ("io1", Some(i)) if (100..=64_000).contains(&i) => i,
        ("io2", Some(i)) if (100..=256_000).contains(&i) => i,
        ("io1" | "io2", None) => {
            return Err(Ec2Error::new(
                ErrorCode::MissingParameter,
                format!("The parameter iops must be specified for {vt} volumes."),
            ))
        }
        ("gp3" | "io1" | "io2", Some(i)) => {
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterValue,
                format!("Value ({i}) for parameter iops is out of range for volume type {vt}"),
            ))
        }
        (_, Some(_)) => {
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterCombination,
                format!("The parameter iops is not supported for {vt} volumes."),
            ))
        }
        // gp2: baseline 3 IOPS/GiB, 100..16000, as EC2 reports it.
        ("gp2", None) => (size.saturating_mul(3)).clamp(100, 16_000),
        (_, None) => 0,
    };
    let throughput = match (vt, throughput) {
        ("gp3", None) => 125,
        ("gp3", Some(t)) if (125..=2_000).contains(&t) => t,
        ("gp3", Some(t)) => {
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterValue,
                format!("Value ({t}) for parameter throughput is out of range: must be 125-2000"),
            ))
        }
        (_, Some(_)) => {
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterCombination,
                format!("The parameter throughput is not supported for {vt} volumes."),
            ))
        }
        (_, None) => 0,
    };
    Ok(VolumeParams {
        volume_type: vt.to_string(),
        size,
        iops,
        throughput,
    })
}

/// Checks a device name: `/dev/sd[a-z]…`, `/dev/xvd…`, `/dev/nvme…`, `sd…`, `xvd…`.
pub fn check_device_name(name: &str) -> Ec2Result<()> {
    let bare = name.strip_prefix("/dev/").unwrap_or(name);
    let ok = !bare.is_empty()
        && bare.len() <= 32
        && (bare.starts_with("sd")
            || bare.starts_with("xvd")
            || bare.starts_with("hd")
            || bare.starts_with("nvme"))
        && bare
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Ec2Error::new(
            ErrorCode::InvalidBlockDeviceMapping,
            format!("Invalid device name {name}"),
        ))
    }
}

/// A mapping after syntax checks, before snapshot lookups.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Drop the device from the image's mapping.
    NoDevice { device_name: String },
    /// Instance store device `ephemeralN`.
    Ephemeral {
        device_name: String,
        virtual_name: String,
    },
    /// An EBS device as requested.
    Ebs {
        device_name: String,
        ebs: EbsBlockDevice,
    },
}

impl Parsed {
    pub fn device_name(&self) -> &str {
        match self {
            Parsed::NoDevice { device_name }
            | Parsed::Ephemeral { device_name, .. }
            | Parsed::Ebs { device_name, .. } => device_name,
        }
    }
}

/// Syntax checks of request mappings: device names, exactly one of ebs / virtual_name /
/// no_device, `ephemeral0..23`, snapshot id format, no duplicate device names.
pub fn parse_mappings(mappings: &[BlockDeviceMapping]) -> Ec2Result<Vec<Parsed>> {
    parse(mappings, true)
}

/// As [`parse_mappings`], but an `Ebs` entry may have neither a snapshot nor a size: it then
/// modifies a device that already exists (CreateImage changing `DeleteOnTermination` of an
/// instance's volume; RunInstances overriding an image's mapping). The caller checks that the
/// device exists.
pub fn parse_mapping_overrides(mappings: &[BlockDeviceMapping]) -> Ec2Result<Vec<Parsed>> {
    parse(mappings, false)
}

fn parse(mappings: &[BlockDeviceMapping], need_source: bool) -> Ec2Result<Vec<Parsed>> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(mappings.len());
    for m in mappings {
        if m.device_name.is_empty() {
            return Err(Ec2Error::missing("BlockDeviceMapping.DeviceName"));
        }
        check_device_name(&m.device_name)?;
        if !seen.insert(m.device_name.clone()) {
            return Err(Ec2Error::new(
                ErrorCode::InvalidBlockDeviceMapping,
                format!(
                    "The device '{}' is used in more than one block-device mapping",
                    m.device_name
                ),
            ));
        }
        let kinds = m.ebs.is_some() as u8
            + (!m.virtual_name.is_empty()) as u8
            + m.no_device.is_some() as u8;
        if kinds != 1 {
            return Err(Ec2Error::new(
                ErrorCode::InvalidBlockDeviceMapping,
                format!(
                    "The block device mapping for '{}' must specify exactly one of Ebs, VirtualName or NoDevice",
                    m.device_name
                ),
            ));
        }
        if m.no_device.is_some() {
            out.push(Parsed::NoDevice {
                device_name: m.device_name.clone(),
            });
        } else if !m.virtual_name.is_empty() {
            let n = m
                .virtual_name
                .strip_prefix("ephemeral")
                .and_then(|n| n.parse::<u32>().ok());
            if !matches!(n, Some(0..=23)) {
                return Err(Ec2Error::new(
                    ErrorCode::InvalidBlockDeviceMapping,
                    format!(
                        "Invalid virtual name {} (expecting ephemeral0..ephemeral23)",
                        m.virtual_name
                    ),
                ));
            }
            out.push(Parsed::Ephemeral {
                device_name: m.device_name.clone(),
                virtual_name: m.virtual_name.clone(),
            });
        } else if let Some(ebs) = &m.ebs {
            if !ebs.snapshot_id.is_empty() {
                ids::check_snapshot_id("snapshotId", &ebs.snapshot_id)?;
            } else if need_source && ebs.volume_size.is_none() {
                return Err(Ec2Error::new(
                    ErrorCode::InvalidBlockDeviceMapping,
                    format!(
                        "The request must contain either a snapshot id or a volume size for device '{}'",
                        m.device_name
                    ),
                ));
            }
            out.push(Parsed::Ebs {
                device_name: m.device_name.clone(),
                ebs: ebs.clone(),
            });
        }
    }
    Ok(out)
}

/// Resolves an EBS mapping against its snapshot (size in GiB and encryption, if any):
/// defaults filled in, size per type (`InvalidBlockDeviceMapping`), `encrypted` only for empty
/// volumes (with a snapshot any value fails), `kms_key_id` only where `allow_kms` (RunInstances).
pub fn resolve_ebs(
    device_name: &str,
    ebs: &EbsBlockDevice,
    snapshot: Option<(&str, i32, bool, &str)>,
    allow_kms: bool,
) -> Ec2Result<Mapping> {
    if snapshot.is_some() && ebs.encrypted.is_some() && !allow_kms {
        return Err(Ec2Error::new(
            ErrorCode::InvalidBlockDeviceMapping,
            format!(
                "The encrypted flag cannot be specified since device {device_name} has a snapshot specified."
            ),
        ));
    }
    if !ebs.kms_key_id.is_empty() && !allow_kms {
        return Err(Ec2Error::new(
            ErrorCode::InvalidBlockDeviceMapping,
            "The parameter KmsKeyId is not supported in block device mappings of this action.",
        ));
    }
    if !ebs.kms_key_id.is_empty() && ebs.encrypted != Some(true) {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterDependency,
            "The parameter KmsKeyId requires the parameter Encrypted to be set.",
        ));
    }
    let p = volume_params(
        &ebs.volume_type,
        "gp3",
        ebs.volume_size,
        snapshot.map(|(id, size, _, _)| (id, size)),
        ebs.iops,
        ebs.throughput,
        ErrorCode::InvalidBlockDeviceMapping,
    )?;
    let (encrypted, kms) = match snapshot {
        Some((_, _, true, key)) => (
            true,
            if ebs.kms_key_id.is_empty() {
                key.to_string()
            } else {
                ebs.kms_key_id.clone()
            },
        ),
        Some((_, _, false, _)) => (ebs.encrypted.unwrap_or(false), ebs.kms_key_id.clone()),
        None => (ebs.encrypted.unwrap_or(false), ebs.kms_key_id.clone()),
    };
    Ok(Mapping {
        device_name: device_name.to_string(),
        virtual_name: String::new(),
        ebs: true,
        snapshot_id: snapshot.map(|(id, ..)| id.to_string()).unwrap_or_default(),
        volume_size: p.size,
        volume_type: p.volume_type,
        iops: p.iops,
        throughput: p.throughput,
        delete_on_termination: ebs.delete_on_termination.unwrap_or(true),
        encrypted,
        kms_key_id: kms,
    })
}

/// An instance store mapping as recorded.
pub fn ephemeral(device_name: &str, virtual_name: &str) -> Mapping {
    Mapping {
        device_name: device_name.to_string(),
        virtual_name: virtual_name.to_string(),
        ebs: false,
        snapshot_id: String::new(),
        volume_size: 0,
        volume_type: String::new(),
        iops: 0,
        throughput: 0,
        delete_on_termination: false,
        encrypted: false,
        kms_key_id: String::new(),
    }
}

/// Renders a recorded mapping in the API's shape.
pub fn render(m: &Mapping) -> BlockDeviceMapping {
    if !m.ebs {
        return BlockDeviceMapping {
            device_name: m.device_name.clone(),
            virtual_name: m.virtual_name.clone(),
            ebs: None,
            no_device: None,
        };
    }
    BlockDeviceMapping {
        device_name: m.device_name.clone(),
        virtual_name: String::new(),
        ebs: Some(EbsBlockDevice {
            snapshot_id: m.snapshot_id.clone(),
            volume_size: Some(m.volume_size),
            volume_type: m.volume_type.clone(),
            iops: (m.iops > 0).then_some(m.iops),
            throughput: (m.throughput > 0).then_some(m.throughput),
            delete_on_termination: Some(m.delete_on_termination),
            encrypted: Some(m.encrypted),
            kms_key_id: m.kms_key_id.clone(),
        }),
        no_device: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ebs(size: Option<i32>, vt: &str) -> EbsBlockDevice {
        EbsBlockDevice {
            volume_size: size,
            volume_type: vt.into(),
            ..Default::default()
        }
    }

    #[test]
    fn sizes_per_type() {
        let c = ErrorCode::InvalidParameterValue;
        assert!(volume_params("gp2", "gp2", Some(1), None, None, None, c).is_ok());
        assert_eq!(
            volume_params("gp2", "gp2", Some(16_385), None, None, None, c)
                .unwrap_err()
                .code,
            c
        );
        assert_eq!(
            volume_params("st1", "gp2", Some(124), None, None, None, c)
                .unwrap_err()
                .code,
            c
        );
        assert_eq!(
            volume_params("io1", "gp2", Some(10), None, None, None, c)
                .unwrap_err()
                .code,
            ErrorCode::MissingParameter
        );
        assert_eq!(
            volume_params("gp9", "gp2", Some(10), None, None, None, c)
                .unwrap_err()
                .code,
            ErrorCode::InvalidParameterValue
        );
        let p = volume_params("", "gp3", None, Some(("snap-12345678", 8)), None, None, c).unwrap();
        assert_eq!((p.size, p.iops, p.throughput), (8, 3000, 125));
    }

    #[test]
    fn smaller_than_snapshot_is_ec2s_message() {
        let e = resolve_ebs(
            "/dev/sda1",
            &ebs(Some(5), ""),
            Some(("snap-12345678", 8, false, "")),
            false,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidBlockDeviceMapping);
        assert_eq!(
            e.message,
            "Volume of size 5GB is smaller than snapshot 'snap-12345678', expect size >= 8GB"
        );
    }

    #[test]
    fn encrypted_with_snapshot_fails() {
        let mut e = ebs(None, "");
        e.encrypted = Some(false);
        let err = resolve_ebs(
            "/dev/sda1",
            &e,
            Some(("snap-12345678", 8, false, "")),
            false,
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidBlockDeviceMapping);
    }

    #[test]
    fn mapping_syntax() {
        let two = BlockDeviceMapping {
            device_name: "/dev/sdb".into(),
            virtual_name: "ephemeral0".into(),
            ebs: Some(ebs(Some(1), "")),
            no_device: None,
        };
        assert_eq!(
            parse_mappings(&[two]).unwrap_err().code,
            ErrorCode::InvalidBlockDeviceMapping
        );
        let bad = BlockDeviceMapping {
            device_name: "/dev/sdb".into(),
            virtual_name: "ephemeral99".into(),
            ..Default::default()
        };
        assert_eq!(
            parse_mappings(&[bad]).unwrap_err().code,
            ErrorCode::InvalidBlockDeviceMapping
        );
        let ok = BlockDeviceMapping {
            device_name: "/dev/sdb".into(),
            no_device: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(
            parse_mappings(&[ok.clone(), ok]).unwrap_err().code,
            ErrorCode::InvalidBlockDeviceMapping
        );
        let bad_dev = BlockDeviceMapping {
            device_name: "/dev/fd0".into(),
            no_device: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(
            parse_mappings(&[bad_dev]).unwrap_err().code,
            ErrorCode::InvalidBlockDeviceMapping
        );
    }
}
