//! Identifier formats (EC2_SEMANTICS.md §1): `ami-`, `snap-`, `vol-`, `i-`, `r-` + 8 or 17
//! lowercase hex digits (17 generated, both accepted); 12-digit account ids.

use rand::RngCore;

use crate::error::{Ec2Error, ErrorCode};

/// Resource id prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Snapshot,
    Volume,
    Instance,
    Reservation,
}

impl Kind {
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Image => "ami",
            Kind::Snapshot => "snap",
            Kind::Volume => "vol",
            Kind::Instance => "i",
            Kind::Reservation => "r",
        }
    }

    /// The kind an id names, from its prefix (`None` for anything else).
    pub fn of(id: &str) -> Option<Kind> {
        let (prefix, _) = id.split_once('-')?;
        [
            Kind::Image,
            Kind::Snapshot,
            Kind::Volume,
            Kind::Instance,
            Kind::Reservation,
        ]
        .into_iter()
        .find(|k| k.prefix() == prefix)
    }
}

/// True if `id` is `<prefix>-` followed by 8 or 17 lowercase hex digits.
pub fn is_valid(kind: Kind, id: &str) -> bool {
    let Some(rest) = id
        .strip_prefix(kind.prefix())
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    (rest.len() == 8 || rest.len() == 17)
        && rest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks an AMI id: `InvalidAMIID.Malformed`, `Invalid id: "<id>" (expecting "ami-...")`.
pub fn check_image_id(id: &str) -> Result<(), Ec2Error> {
    if is_valid(Kind::Image, id) {
        Ok(())
    } else {
        Err(Ec2Error::new(
            ErrorCode::InvalidAmiIdMalformed,
            format!("Invalid id: \"{id}\" (expecting \"ami-...\")"),
        ))
    }
}

/// Checks a snapshot id. `[sim]` `InvalidParameterValue` everywhere (EC2_SEMANTICS.md §1).
pub fn check_snapshot_id(param: &str, id: &str) -> Result<(), Ec2Error> {
    if is_valid(Kind::Snapshot, id) {
        Ok(())
    } else {
        Err(Ec2Error::invalid_value(param, id, "Expected: 'snap-...'."))
    }
}

/// Checks a volume id: `InvalidVolumeID.Malformed`.
pub fn check_volume_id(id: &str) -> Result<(), Ec2Error> {
    if is_valid(Kind::Volume, id) {
        Ok(())
    } else {
        Err(Ec2Error::new(
            ErrorCode::InvalidVolumeIdMalformed,
            format!("Invalid id: \"{id}\" (expecting \"vol-...\")"),
        ))
    }
}

/// Checks an instance id: `InvalidInstanceID.Malformed`.
pub fn check_instance_id(id: &str) -> Result<(), Ec2Error> {
    if is_valid(Kind::Instance, id) {
        Ok(())
    } else {
        Err(Ec2Error::new(
            ErrorCode::InvalidInstanceIdMalformed,
            format!("Invalid id: \"{id}\" (expecting \"i-...\")"),
        ))
    }
}

/// True for a 12-digit account id.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The account that timers and sagas act as.
pub const SYSTEM_ACCOUNT: &str = "system";

/// A fresh 17-hex-digit id with the kind's prefix.
pub fn generate(kind: Kind, rng: &mut dyn RngCore) -> String {
    let n = rng.next_u64() as u128 | ((rng.next_u32() as u128 & 0xf) << 64);
    let prefix = kind.prefix();
    let mut id = String::with_capacity(prefix.len() + 18);
    id.push_str(prefix);
    id.push('-');
    // 17 lowercase hex digits, zero-padded (68 bits: the 64 + 4 drawn above).
    for shift in (0..17).rev() {
        let digit = ((n >> (shift * 4)) & 0xf) as u32;
        id.push(char::from_digit(digit, 16).unwrap_or('0'));
    }
    id
}

/// A fresh UUID-shaped string (event ids, request ids, data encryption key ids): 16 random
/// bytes as a version 4, RFC 4122 variant UUID, lowercase and hyphenated. Several are drawn per
/// write (request, events, record), so it is formatted without `format!`.
pub fn generate_uuid(rng: &mut dyn RngCore) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    uuid_v4_string(b)
}

/// `bytes` as a version 4, RFC 4122 variant UUID (those bits set), lowercase and hyphenated.
pub fn uuid_v4_string(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Uuid::from_bytes(bytes)
        .hyphenated()
        .encode_lower(&mut buf)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn accepts_8_and_17_hex_digits_only() {
        assert!(is_valid(Kind::Image, "ami-12345678"));
        assert!(is_valid(Kind::Image, "ami-0123456789abcdef0"));
        assert!(!is_valid(Kind::Image, "ami-0123456789ABCDEF0"));
        assert!(!is_valid(Kind::Image, "ami-123"));
        assert!(!is_valid(Kind::Image, "snap-12345678"));
        assert!(!is_valid(Kind::Instance, "i-1234567g"));
        assert_eq!(Kind::of("vol-12345678"), Some(Kind::Volume));
        assert_eq!(Kind::of("foo-1"), None);
    }

    #[test]
    fn generated_ids_are_valid_and_seeded() {
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let x = generate(Kind::Snapshot, &mut a);
        assert!(is_valid(Kind::Snapshot, &x), "{x}");
        assert_eq!(x, generate(Kind::Snapshot, &mut b));
        assert_eq!(generate_uuid(&mut a).len(), 36);
    }

    /// Ids drawn from a seed are the same as before they were formatted by hand: a seeded run
    /// still reproduces the ids of an earlier one.
    #[test]
    fn generated_ids_keep_their_format_for_a_seed() {
        use rand::RngCore as _;
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for _ in 0..2000 {
            let n = b.next_u64() as u128 | ((b.next_u32() as u128 & 0xf) << 64);
            assert_eq!(generate(Kind::Image, &mut a), format!("ami-{n:017x}"));
            let mut bytes = [0u8; 16];
            b.fill_bytes(&mut bytes);
            bytes[6] = (bytes[6] & 0x0f) | 0x40;
            bytes[8] = (bytes[8] & 0x3f) | 0x80;
            let h = hex::encode(bytes);
            let expected = format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            );
            assert_eq!(generate_uuid(&mut a), expected);
        }
    }

    #[test]
    fn malformed_ami_id_message_is_ec2s() {
        let e = check_image_id("ami-xyz").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidAmiIdMalformed);
        assert_eq!(e.message, "Invalid id: \"ami-xyz\" (expecting \"ami-...\")");
    }
}
