//! Equivalence tests of `collect_resources` against the reference
//! `walk(&to_json(..), None, out)`.

/// The specification: the JSON walk the recorder used before this module (and still uses for
/// a record's parameters given as JSON), over the JSON LookupEvents shows.
mod reference {
    pub use crate::audit::requests::{resources_of, to_json, walk};

    /// `classify` as first written, kept verbatim as the specification of [`super::classify`].
    pub fn classify(key: &str, value: &str) -> Option<(String, String)> {
        if matches!(key, "keyId" | "kmsKeyId" | "targetKeyId") {
            if value.is_empty() || value.starts_with("alias/") || value.contains(":alias/") {
                return None;
            }
            let id = value
                .rsplit_once(":key/")
                .map(|(_, id)| id)
                .unwrap_or(value);
            return Some(("AWS::KMS::Key".to_string(), id.to_string()));
        }
        if !(key.ends_with("Id") || key.ends_with("Ids")) {
            return None;
        }
        let (prefix, rest) = value.split_once('-')?;
        let kind = match prefix {
            "ami" => "AWS::EC2::Image",
            "snap" => "AWS::EC2::Snapshot",
            "vol" => "AWS::EC2::Volume",
            "i" => "AWS::EC2::Instance",
            _ => return None,
        };
        (!rest.is_empty() && rest.len() <= 32 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| (kind.to_string(), value.to_string()))
    }
}
use super::*;
use serde::ser::{
    Error as _, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant,
    SerializeTuple, SerializeTupleVariant,
};
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, HashMap};

type Out = Vec<(String, String)>;

/// Runs both implementations on `msg` starting from `pre`, asserts equality,
/// returns the result.
fn check_with<T: Serialize + ?Sized>(msg: &T, pre: &[(String, String)]) -> Out {
    let mut expected = pre.to_vec();
    reference::walk(&reference::to_json(&msg), None, &mut expected);
    let mut got = pre.to_vec();
    collect_resources(msg, &mut got);
    assert_eq!(got, expected, "\njson: {}", reference::to_json(&msg));
    got
}

fn check<T: Serialize + ?Sized>(msg: &T) -> Out {
    check_with(msg, &[])
}

fn pairs(items: &[(&str, &str)]) -> Out {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// Deterministic PRNG (splitmix64).

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

/// Strings that do / do not classify, with a small id space (duplicates) and
/// a large one (more than 50 distinct ids).
fn id_string(rng: &mut Rng) -> String {
    match rng.below(24) {
        0 => format!("ami-{:x}", rng.below(6)),
        1 => format!("snap-{:x}", rng.below(6)),
        2 => format!("vol-{}", rng.below(6)),
        3 => format!("i-{}", rng.below(6)),
        4 => format!("ami-{:016x}{:016x}", rng.next(), rng.next()), // 32 chars: ok
        5 => format!("snap-{:016x}{:016x}0", rng.next(), rng.next()), // 33: too long
        6 => rng
            .pick(&[
                "ami-", "i-", "-", "-ami", "ami", "snap_1", "vol-ab_c", "vol-ab-c", "ami-é1",
                "AMI-1", "ami- 1",
            ])
            .to_string(),
        7 => format!("alias/k{}", rng.below(4)),
        8 => format!("arn:aws:kms:us-east-1:123456789012:alias/k{}", rng.below(4)),
        9 => format!("arn:aws:kms:us-east-1:123456789012:key/{}", rng.below(6)),
        10 => rng
            .pick(&[
                "arn:aws:kms:eu-west-1:1:key/",
                "arn:x:key/a:key/b",
                ":key/",
                "key/abc",
            ])
            .to_string(),
        11 => String::new(),
        12 => format!("k{}", rng.below(6)),
        13 => format!("other-{}", rng.below(6)),
        14 => rng
            .pick(&["plain", "ünïcødé", "snap-Ab9", "i-0", "vol-Z"])
            .to_string(),
        15 => format!("mrk-{}", rng.below(6)),
        16..=19 => format!(
            "{}-{}",
            rng.pick(&["ami", "snap", "vol", "i"]),
            rng.below(200)
        ),
        _ => format!("ami-{}", rng.below(40)),
    }
}

fn maybe_string(rng: &mut Rng) -> String {
    if rng.percent(35) {
        String::new()
    } else {
        id_string(rng)
    }
}

fn strings(rng: &mut Rng, max: usize) -> Vec<String> {
    (0..rng.below(max + 1)).map(|_| id_string(rng)).collect()
}

const MAP_KEYS: &[&str] = &[
    "imageId",
    "snapshotIds",
    "kmsKeyId",
    "keyId",
    "targetKeyId",
    "name",
    "Id",
    "Ids",
    "a",
    "b",
    "B",
    "zId",
    "volumeId",
    "instanceIds",
    "éId",
    "",
    "10",
    "9",
    "KeyId",
    "keyid",
    "imageIdX",
];

fn map_key(rng: &mut Rng) -> String {
    if rng.percent(80) {
        rng.pick(MAP_KEYS).to_string()
    } else {
        format!("k{}Id", rng.below(30))
    }
}

// ---------------------------------------------------------------------------
// Protobuf-like message types.

#[derive(Serialize, Clone, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct Ebs {
    snapshot_id: String,
    kms_key_id: String,
    volume_size: i32,
    delete_on_termination: bool,
    volume_type: String,
    encrypted: Option<bool>,
    outpost_id: Option<String>,
}

#[derive(Serialize, Clone, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct Mapping {
    device_name: String,
    ebs: Option<Ebs>,
    virtual_name: String,
    no_device: String,
}

#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
enum Source {
    ImageId(String),
    Snapshot(Ebs),
    InstanceIds(Vec<String>),
    Mapping(Box<Mapping>),
    Nothing,
    #[serde(rename = "ami-0feed")]
    AmiLiteral,
    Pair(String, String),
    Detail {
        volume_id: String,
        z_key_id: String,
        a_image_id: String,
        size: u64,
    },
}

#[derive(Serialize, Clone, Debug)]
enum Tier {
    #[serde(rename = "vol-0abc")]
    Vol,
    #[serde(rename = "keyA")]
    Key,
    Plain,
}

/// Serializes as bytes (`serialize_bytes`).
#[derive(Clone, Default, Debug)]
struct Bytes(Vec<u8>);
impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

/// Serializes through `collect_str`.
#[derive(Clone, Default, Debug)]
struct Shown(String);
impl Serialize for Shown {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

#[derive(Serialize, Clone, Default, Debug)]
struct Wrapper(String);

#[derive(Serialize, Clone, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct KmsChar {
    key_id: char,
    kms_key_id: Option<char>,
    image_id: char,
}

#[derive(Serialize, Clone, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct Flat {
    image_id: String,
    #[serde(flatten)]
    extra: HashMap<String, String>,
    #[serde(flatten)]
    ebs: Option<Ebs>,
}

#[derive(Serialize, Clone, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct RegisterImage {
    z_image_id: String,
    a_snapshot_id: String,
    name: String,
    description: String,
    image_id: String,
    source_snapshot_id: String,
    instance_ids: Vec<String>,
    kms_key_id: String,
    key_id: Option<String>,
    target_key_id: String,
    block_device_mappings: Vec<Mapping>,
    source: Option<Source>,
    sources: Vec<Source>,
    tags: HashMap<String, String>,
    labels: BTreeMap<String, String>,
    id_lists: HashMap<String, Vec<String>>,
    by_number: BTreeMap<u32, String>,
    by_signed: HashMap<i64, Vec<String>>,
    by_flag: HashMap<bool, String>,
    by_char: BTreeMap<char, Vec<String>>,
    size: u64,
    dry_run: bool,
    data: Vec<u8>,
    raw: Bytes,
    kms_char: Option<KmsChar>,
    tier_id: Option<Tier>,
    key_id_tiers: Vec<Tier>,
    shown_id: Option<Shown>,
    wrapped_id: Wrapper,
    pair_ids: (String, u32, String),
    maybe_maybe_id: Option<Option<String>>,
    nested_ids: Vec<Vec<String>>,
    flat: Option<Flat>,
    child: Option<Box<RegisterImage>>,
}

fn rand_ebs(rng: &mut Rng) -> Ebs {
    Ebs {
        snapshot_id: maybe_string(rng),
        kms_key_id: maybe_string(rng),
        volume_size: rng.below(3) as i32,
        delete_on_termination: rng.percent(50),
        volume_type: rng.pick(&["gp3", "", "vol-123"]).to_string(),
        encrypted: rng.percent(50).then(|| rng.percent(50)),
        outpost_id: rng.percent(30).then(|| id_string(rng)),
    }
}

fn rand_mapping(rng: &mut Rng) -> Mapping {
    Mapping {
        device_name: rng.pick(&["/dev/sda1", "/dev/sdb", ""]).to_string(),
        ebs: rng.percent(70).then(|| rand_ebs(rng)),
        virtual_name: maybe_string(rng),
        no_device: rng.pick(&["", "true"]).to_string(),
    }
}

fn rand_source(rng: &mut Rng) -> Source {
    match rng.below(8) {
        0 => Source::ImageId(id_string(rng)),
        1 => Source::Snapshot(rand_ebs(rng)),
        2 => Source::InstanceIds(strings(rng, 4)),
        3 => Source::Mapping(Box::new(rand_mapping(rng))),
        4 => Source::Nothing,
        5 => Source::AmiLiteral,
        6 => Source::Pair(id_string(rng), id_string(rng)),
        _ => Source::Detail {
            volume_id: maybe_string(rng),
            z_key_id: maybe_string(rng),
            a_image_id: maybe_string(rng),
            size: rng.below(2) as u64,
        },
    }
}

fn rand_tier(rng: &mut Rng) -> Tier {
    match rng.below(3) {
        0 => Tier::Vol,
        1 => Tier::Key,
        _ => Tier::Plain,
    }
}

fn rand_char(rng: &mut Rng) -> char {
    rng.pick(&['a', 'x', '-', 'é', '0', 'I'])
}

fn rand_register(rng: &mut Rng, depth: usize) -> RegisterImage {
    let n = |rng: &mut Rng, max: usize| rng.below(max + 1);
    RegisterImage {
        z_image_id: maybe_string(rng),
        a_snapshot_id: maybe_string(rng),
        name: maybe_string(rng),
        description: maybe_string(rng),
        image_id: maybe_string(rng),
        source_snapshot_id: maybe_string(rng),
        instance_ids: {
            let max = if rng.percent(10) { 80 } else { 5 };
            strings(rng, max)
        },
        kms_key_id: maybe_string(rng),
        key_id: rng.percent(50).then(|| maybe_string(rng)),
        target_key_id: maybe_string(rng),
        block_device_mappings: (0..n(rng, 4)).map(|_| rand_mapping(rng)).collect(),
        source: rng.percent(60).then(|| rand_source(rng)),
        sources: (0..n(rng, 3)).map(|_| rand_source(rng)).collect(),
        tags: (0..n(rng, 4))
            .map(|_| (map_key(rng), maybe_string(rng)))
            .collect(),
        labels: (0..n(rng, 4))
            .map(|_| (map_key(rng), maybe_string(rng)))
            .collect(),
        id_lists: (0..n(rng, 3))
            .map(|_| (map_key(rng), strings(rng, 3)))
            .collect(),
        by_number: (0..n(rng, 4))
            .map(|_| (rng.below(25) as u32, id_string(rng)))
            .collect(),
        by_signed: (0..n(rng, 3))
            .map(|_| (rng.below(30) as i64 - 15, strings(rng, 2)))
            .collect(),
        by_flag: (0..n(rng, 2))
            .map(|_| (rng.percent(50), id_string(rng)))
            .collect(),
        by_char: (0..n(rng, 3))
            .map(|_| (rand_char(rng), strings(rng, 2)))
            .collect(),
        size: rng.below(3) as u64,
        dry_run: rng.percent(50),
        data: (0..n(rng, 3)).map(|_| rng.below(256) as u8).collect(),
        raw: Bytes((0..n(rng, 3)).map(|_| rng.below(256) as u8).collect()),
        kms_char: rng.percent(30).then(|| KmsChar {
            key_id: rand_char(rng),
            kms_key_id: rng.percent(50).then(|| rand_char(rng)),
            image_id: rand_char(rng),
        }),
        tier_id: rng.percent(50).then(|| rand_tier(rng)),
        key_id_tiers: (0..n(rng, 2)).map(|_| rand_tier(rng)).collect(),
        shown_id: rng.percent(40).then(|| Shown(id_string(rng))),
        wrapped_id: Wrapper(maybe_string(rng)),
        pair_ids: (maybe_string(rng), rng.below(2) as u32, maybe_string(rng)),
        maybe_maybe_id: match rng.below(3) {
            0 => None,
            1 => Some(None),
            _ => Some(Some(id_string(rng))),
        },
        nested_ids: (0..n(rng, 2)).map(|_| strings(rng, 3)).collect(),
        flat: rng.percent(40).then(|| Flat {
            image_id: maybe_string(rng),
            extra: (0..n(rng, 4))
                .map(|_| (map_key(rng), maybe_string(rng)))
                .collect(),
            ebs: rng.percent(50).then(|| rand_ebs(rng)),
        }),
        child: (depth < 2 && rng.percent(30)).then(|| Box::new(rand_register(rng, depth + 1))),
    }
}

// ---------------------------------------------------------------------------
// Hand-made cases.

#[test]
fn classify_matches_reference() {
    let mut rng = Rng(1);
    let keys = [
        "keyId",
        "kmsKeyId",
        "targetKeyId",
        "imageId",
        "instanceIds",
        "name",
        "Id",
        "Ids",
        "",
        "KeyId",
    ];
    for _ in 0..20_000 {
        let k = rng.pick(&keys);
        let v = id_string(&mut rng);
        assert_eq!(classify(k, &v), reference::classify(k, &v), "{k:?} {v:?}");
        if classify(k, &v).is_some() {
            assert!(key_may_classify(k));
        }
        // Adversarial concatenations of pattern fragments.
        const FRAGMENTS: &[&str] = &[
            ":", "key/", "alias/", ":key/", ":alias/", "ami-", "i-", "a", "-", "é", "1", "k",
        ];
        let v: String = (0..rng.below(7)).map(|_| rng.pick(FRAGMENTS)).collect();
        assert_eq!(classify(k, &v), reference::classify(k, &v), "{k:?} {v:?}");
    }
}

#[test]
fn sorted_order_not_declaration_order() {
    let msg = RegisterImage {
        z_image_id: "ami-1".into(),
        a_snapshot_id: "snap-1".into(),
        instance_ids: vec!["i-2".into(), "i-1".into(), "i-2".into()],
        kms_key_id: "arn:aws:kms:us-east-1:1:key/abc".into(),
        key_id: Some("alias/foo".into()),
        target_key_id: "xyz".into(),
        ..Default::default()
    };
    let got = check(&msg);
    assert_eq!(
        got,
        pairs(&[
            ("AWS::EC2::Snapshot", "snap-1"),
            ("AWS::EC2::Instance", "i-2"),
            ("AWS::EC2::Instance", "i-1"),
            ("AWS::KMS::Key", "abc"),
            ("AWS::KMS::Key", "xyz"),
            ("AWS::EC2::Image", "ami-1"),
        ])
    );
}

#[test]
fn nested_mappings_and_oneof() {
    let ebs = |s: &str, k: &str| Ebs {
        snapshot_id: s.into(),
        kms_key_id: k.into(),
        volume_size: 8,
        ..Default::default()
    };
    let msg = RegisterImage {
        image_id: "ami-9".into(),
        block_device_mappings: vec![
            Mapping {
                device_name: "/dev/sda1".into(),
                ebs: Some(ebs("snap-b", "k1")),
                ..Default::default()
            },
            Mapping {
                device_name: "/dev/sdb".into(),
                ebs: None,
                ..Default::default()
            },
            Mapping {
                device_name: "/dev/sdc".into(),
                ebs: Some(ebs("snap-a", "alias/x")),
                ..Default::default()
            },
        ],
        source: Some(Source::Detail {
            volume_id: "vol-1".into(),
            z_key_id: "i-3".into(),
            a_image_id: "ami-2".into(),
            size: 0,
        }),
        sources: vec![
            Source::ImageId("ami-3".into()),
            Source::AmiLiteral,
            Source::InstanceIds(vec!["i-9".into(), "i-8".into()]),
            Source::Pair("snap-x".into(), "vol-y".into()),
            Source::Snapshot(ebs("snap-c", "")),
            Source::Nothing,
        ],
        tier_id: Some(Tier::Vol),
        key_id_tiers: vec![Tier::Key, Tier::Plain],
        ..Default::default()
    };
    let got = check(&msg);
    assert!(got.contains(&("AWS::EC2::Volume".into(), "vol-0abc".into())));
    assert!(got.contains(&("AWS::EC2::Image".into(), "ami-3".into())));
    // blockDeviceMappings[0].ebs: "kmsKeyId" sorts before "snapshotId".
    assert_eq!(
        got[..2],
        pairs(&[("AWS::KMS::Key", "k1"), ("AWS::EC2::Snapshot", "snap-b")])
    );
}

#[test]
fn maps_with_various_keys() {
    let mut msg = RegisterImage::default();
    for (k, v) in [
        ("zId", "ami-z"),
        ("imageId", "ami-1"),
        ("kmsKeyId", "k"),
        ("10", "ami-10"),
        ("9Id", "ami-9"),
        ("", "ami-e"),
    ] {
        msg.tags.insert(k.into(), v.into());
        msg.labels.insert(format!("{k}x"), v.into());
    }
    for i in [1u32, 2, 10, 20, 3] {
        msg.by_number.insert(i, format!("ami-{i}"));
    }
    msg.by_flag.insert(true, "ami-t".into());
    msg.by_flag.insert(false, "ami-f".into());
    msg.by_char.insert('b', vec!["ami-b".into()]);
    msg.id_lists
        .insert("instanceIds".into(), vec!["i-1".into(), "i-0".into()]);
    msg.id_lists
        .insert("imageIds".into(), vec!["ami-0".into(), "snap-0".into()]);
    msg.by_signed.insert(-3, vec!["ami-m3".into()]);
    check(&msg);
    check(&msg.tags);
    check(&msg.labels);
    check(&msg.id_lists);
}

#[test]
fn top_level_shapes() {
    assert!(check("ami-1").is_empty()); // No key at top level.
    assert!(check(&vec!["ami-1", "snap-2"]).is_empty());
    assert_eq!(
        check(&Source::ImageId("ami-1".into())),
        pairs(&[("AWS::EC2::Image", "ami-1")])
    );
    check(&Source::AmiLiteral);
    check(&Tier::Vol);
    check(&Source::Pair("snap-1".into(), "ami-1".into()));
    check(&());
    check(&Option::<String>::None);
    check(&Some(Source::InstanceIds(vec!["i-1".into()])));
    check(&HashMap::from([("keyId", 'k')]));
    check(&BTreeMap::from([("keyId", Shown("arn:a:key/zz".into()))]));
    check(&BTreeMap::from([(
        "imageId",
        (1u8, "ami-1", Wrapper("ami-2".into())),
    )]));
}

#[test]
fn flatten_duplicate_keys_last_wins() {
    let mut flat = Flat {
        image_id: "ami-1".into(),
        ..Default::default()
    };
    flat.extra.insert("imageId".into(), "ami-2".into());
    assert_eq!(check(&flat), pairs(&[("AWS::EC2::Image", "ami-2")]));
    flat.extra.insert("imageId".into(), String::new()); // Later empty value wins.
    assert!(check(&flat).is_empty());
    flat.ebs = Some(Ebs {
        snapshot_id: "snap-1".into(),
        ..Default::default()
    });
    flat.extra.insert("snapshotId".into(), "snap-2".into());
    assert_eq!(check(&flat), pairs(&[("AWS::EC2::Snapshot", "snap-1")]));
}

/// A hand-written impl that repeats struct fields.
struct DupFields;
impl Serialize for DupFields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Dup", 5)?;
        st.serialize_field("imageId", &["ami-1", "ami-2"])?;
        st.serialize_field("bId", "ami-b")?;
        st.serialize_field("imageId", &None::<u8>)?;
        st.serialize_field("aId", "ami-a")?;
        st.serialize_field("bId", &vec![Source::ImageId("ami-x".into())])?;
        st.end()
    }
}

#[test]
fn duplicate_struct_fields() {
    // "imageId" ends up null (pruned), the first "bId" is overwritten by an
    // array whose object puts "ami-x" under "imageId".
    assert_eq!(
        check(&DupFields),
        pairs(&[("AWS::EC2::Image", "ami-a"), ("AWS::EC2::Image", "ami-x")])
    );
}

struct Failing;
impl Serialize for Failing {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(S::Error::custom("boom"))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WithFailing {
    image_id: String,
    later: Option<Failing>,
}

#[derive(Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct StructKey {
    a: u8,
}

#[test]
fn errors_append_nothing() {
    let pre = pairs(&[("AWS::EC2::Image", "ami-0")]);
    assert_eq!(
        check_with(
            &WithFailing {
                image_id: "ami-1".into(),
                later: Some(Failing)
            },
            &pre
        ),
        pre
    );
    assert_eq!(
        check(&WithFailing {
            image_id: "ami-1".into(),
            later: None
        })
        .len(),
        1
    );
    assert!(check(&BTreeMap::from([(StructKey { a: 1 }, "ami-1")])).is_empty());
    assert!(check(&BTreeMap::from([(vec![1u8], "ami-1")])).is_empty());
    assert!(check(&BTreeMap::from([(Some(1u8), "ami-1")])).is_empty());
    assert!(check(&BTreeMap::from([((), "ami-1")])).is_empty());
    assert!(check(&(BTreeMap::from([("imageId", "ami-1")]), u128::MAX)).is_empty());
    assert!(check(&(BTreeMap::from([("imageId", "ami-1")]), i128::MIN)).is_empty());
    assert_eq!(
        check(&(
            BTreeMap::from([("imageId", "ami-1")]),
            u64::MAX as u128,
            i64::MIN as i128
        ))
        .len(),
        1
    );
    assert!(check(&(
        BTreeMap::from([("imageId", "ami-1")]),
        Node::Map(vec![(KeyNode::F64(f64::NAN), Node::Null)])
    ))
    .is_empty());
}

/// `serialize_value` without `serialize_key` (serde_json panics; we must not).
struct ValueWithoutKey;
impl Serialize for ValueWithoutKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_value("ami-1")?;
        m.end()
    }
}

/// A `Display` impl that fails (serde_json's `to_string` panics; we must not).
struct BadDisplay;
impl std::fmt::Display for BadDisplay {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Err(std::fmt::Error)
    }
}
struct CollectsBadDisplay;
impl Serialize for CollectsBadDisplay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("imageId", "ami-1")?;
        m.serialize_key("keyId")?;
        m.serialize_value(&Displayed)?;
        m.end()
    }
}
struct Displayed;
impl Serialize for Displayed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&BadDisplay)
    }
}

#[test]
fn reference_panics_we_do_not() {
    let mut out = Vec::new();
    collect_resources(&ValueWithoutKey, &mut out);
    collect_resources(&CollectsBadDisplay, &mut out);
    collect_resources(&BTreeMap::from([(BadDisplayKey, "ami-1")]), &mut out);
    assert!(out.is_empty());
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct BadDisplayKey;
impl Serialize for BadDisplayKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&BadDisplay)
    }
}

#[test]
fn cap_and_dedupe_with_prefilled_out() {
    let ids: Vec<String> = (0..120).map(|i| format!("i-{}", i % 70)).collect();
    let msg = RegisterImage {
        instance_ids: ids,
        image_id: "ami-1".into(),
        ..Default::default()
    };
    assert_eq!(check(&msg).len(), MAX_RESOURCES);
    for n in [0, 1, 10, 49, 50, 51, 60] {
        let pre: Out = (0..n)
            .map(|i| ("AWS::EC2::Instance".to_string(), format!("i-{}", i * 2)))
            .collect();
        let got = check_with(&msg, &pre);
        assert_eq!(got.len(), MAX_RESOURCES.max(n));
    }
    // Dedupe against pre-filled entries, also ones with a foreign kind.
    let pre = pairs(&[("AWS::EC2::Image", "ami-1"), ("Other", "i-1")]);
    let got = check_with(
        &RegisterImage {
            instance_ids: vec!["i-1".into()],
            image_id: "ami-1".into(),
            ..Default::default()
        },
        &pre,
    );
    assert_eq!(got.len(), 3);
}

#[test]
fn request_and_response_like_resources_of() {
    let mut rng = Rng(99);
    for _ in 0..300 {
        let req = rand_register(&mut rng, 0);
        let resp = rand_source(&mut rng);
        let expected =
            reference::resources_of(&[&reference::to_json(&req), &reference::to_json(&resp)]);
        let mut got = Vec::new();
        collect_resources(&req, &mut got);
        collect_resources(&resp, &mut got);
        assert_eq!(got, expected);
    }
}

// ---------------------------------------------------------------------------
// Randomized equivalence.

#[test]
fn random_register_images() {
    let mut rng = Rng(7);
    let mut nonempty = 0;
    let mut capped = 0;
    for _ in 0..3000 {
        let msg = rand_register(&mut rng, 0);
        let pre: Out = if rng.percent(25) {
            (0..rng.below(56))
                .map(|_| {
                    (
                        rng.pick(&["AWS::EC2::Image", "AWS::EC2::Instance", "AWS::KMS::Key"])
                            .to_string(),
                        id_string(&mut rng),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let got = check_with(&msg, &pre);
        nonempty += (got.len() > pre.len()) as usize;
        capped += (got.len() == MAX_RESOURCES) as usize;
    }
    assert!(nonempty > 2000, "{nonempty}");
    assert!(capped > 20, "{capped}");
}

/// Arbitrary serializer call sequences.
#[derive(Debug)]
enum Node {
    Str(String),
    Char(char),
    Num(i64),
    Float(f64),
    Bool(bool),
    Null,
    Bytes(Vec<u8>),
    Seq(Vec<Node>),
    Tuple(Vec<Node>),
    Map(Vec<(KeyNode, Node)>),
    Struct(Vec<(&'static str, Node)>),
    NewtypeVariant(&'static str, Box<Node>),
    TupleVariant(&'static str, Vec<Node>),
    StructVariant(&'static str, Vec<(&'static str, Node)>),
    UnitVariant(&'static str),
    Some(Box<Node>),
    NewtypeStruct(Box<Node>),
    UnitStruct,
    Display(String),
    Big(i128),
    BigU(u128),
    Fail,
}

#[derive(Debug)]
enum KeyNode {
    Str(String),
    Int(i64),
    U128(u128),
    Bool(bool),
    Char(char),
    F64(f64),
    F32(f32),
    UnitVariant(&'static str),
    Newtype(Box<KeyNode>),
    Display(String),
    Bad(u8),
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Str(v) => s.serialize_str(v),
            Node::Char(c) => s.serialize_char(*c),
            Node::Num(n) => s.serialize_i64(*n),
            Node::Float(f) => s.serialize_f64(*f),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Null => s.serialize_unit(),
            Node::Bytes(b) => s.serialize_bytes(b),
            Node::Seq(v) => {
                let mut q = s.serialize_seq(Some(v.len()))?;
                for x in v {
                    q.serialize_element(x)?;
                }
                q.end()
            }
            Node::Tuple(v) => {
                let mut q = s.serialize_tuple(v.len())?;
                for x in v {
                    q.serialize_element(x)?;
                }
                q.end()
            }
            Node::Map(v) => {
                let mut m = s.serialize_map(None)?;
                for (k, x) in v {
                    m.serialize_entry(k, x)?;
                }
                m.end()
            }
            Node::Struct(v) => {
                let mut m = s.serialize_struct("S", v.len())?;
                for (k, x) in v {
                    m.serialize_field(k, x)?;
                }
                m.end()
            }
            Node::NewtypeVariant(n, x) => s.serialize_newtype_variant("E", 0, n, x),
            Node::TupleVariant(n, v) => {
                let mut q = s.serialize_tuple_variant("E", 0, n, v.len())?;
                for x in v {
                    q.serialize_field(x)?;
                }
                q.end()
            }
            Node::StructVariant(n, v) => {
                let mut m = s.serialize_struct_variant("E", 0, n, v.len())?;
                for (k, x) in v {
                    m.serialize_field(k, x)?;
                }
                m.end()
            }
            Node::UnitVariant(n) => s.serialize_unit_variant("E", 0, n),
            Node::Some(x) => s.serialize_some(x),
            Node::NewtypeStruct(x) => s.serialize_newtype_struct("N", x),
            Node::UnitStruct => s.serialize_unit_struct("U"),
            Node::Display(v) => s.collect_str(v),
            Node::Big(v) => s.serialize_i128(*v),
            Node::BigU(v) => s.serialize_u128(*v),
            Node::Fail => Err(S::Error::custom("boom")),
        }
    }
}

impl Serialize for KeyNode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KeyNode::Str(v) => s.serialize_str(v),
            KeyNode::Int(v) => s.serialize_i64(*v),
            KeyNode::U128(v) => s.serialize_u128(*v),
            KeyNode::Bool(v) => s.serialize_bool(*v),
            KeyNode::Char(v) => s.serialize_char(*v),
            KeyNode::F64(v) => s.serialize_f64(*v),
            KeyNode::F32(v) => s.serialize_f32(*v),
            KeyNode::UnitVariant(v) => s.serialize_unit_variant("E", 0, v),
            KeyNode::Newtype(k) => s.serialize_newtype_struct("N", k),
            KeyNode::Display(v) => s.collect_str(v),
            KeyNode::Bad(0) => s.serialize_unit(),
            KeyNode::Bad(1) => s.serialize_none(),
            KeyNode::Bad(2) => s.serialize_bytes(b"ab"),
            KeyNode::Bad(3) => s.serialize_seq(None)?.end(),
            KeyNode::Bad(4) => s.serialize_newtype_variant("E", 0, "imageId", "ami-1"),
            KeyNode::Bad(_) => s.serialize_struct("S", 0)?.end(),
        }
    }
}

const STATIC_KEYS: &[&str] = &[
    "imageId",
    "snapshotIds",
    "kmsKeyId",
    "keyId",
    "targetKeyId",
    "name",
    "Id",
    "a",
    "b",
    "B",
    "zId",
    "volumeId",
    "instanceIds",
    "éId",
    "",
    "10",
    "9",
    "keyIdX",
];

fn rand_key(rng: &mut Rng, allow_bad: bool) -> KeyNode {
    match rng.below(if allow_bad { 40 } else { 39 }) {
        0..=19 => KeyNode::Str(map_key(rng)),
        20..=22 => KeyNode::Int(rng.below(30) as i64 - 10),
        23 => KeyNode::U128(rng.below(1000) as u128 * 1_000_000_000_000_000_000_000),
        24 => KeyNode::Bool(rng.percent(50)),
        25 => KeyNode::Char(rand_char(rng)),
        26 => KeyNode::F64(rng.pick(&[
            0.0, -0.0, 1.0, 1.5, 10.0, 1e16, 1e15, 1e-5, 1e-6, -2.5e-7, 123456.789, 9.0,
        ])),
        27 => KeyNode::F32(rng.pick(&[0.0, 1.0, 1.5e12, 1e13, 1e-6, 1e-7, -3.25])),
        28..=30 => KeyNode::UnitVariant(rng.pick(STATIC_KEYS)),
        31..=33 => KeyNode::Newtype(Box::new(rand_key(rng, allow_bad))),
        34..=38 => KeyNode::Display(map_key(rng)),
        _ => KeyNode::Bad(rng.below(6) as u8),
    }
}

fn rand_node(rng: &mut Rng, depth: usize, fail: bool) -> Node {
    let leaf = depth >= 5 || rng.percent(35);
    if leaf {
        return match rng.below(if fail { 20 } else { 19 }) {
            0..=7 => Node::Str(id_string(rng)),
            8 => Node::Char(rand_char(rng)),
            9 => Node::Num(rng.below(3) as i64),
            10 => Node::Float(rng.pick(&[0.0, 1.5, f64::NAN])),
            11 => Node::Bool(rng.percent(50)),
            12 => Node::Null,
            13 => Node::Bytes(vec![1, 2]),
            14 => Node::UnitVariant(rng.pick(&["ami-1", "vol-x", "k", "Plain", ""])),
            15 => Node::UnitStruct,
            16 => Node::Display(id_string(rng)),
            17 => Node::Big(rng.pick(&[
                0,
                -1,
                i64::MIN as i128,
                u64::MAX as i128,
                if fail { i128::MAX } else { 5 },
            ])),
            18 => Node::BigU(rng.pick(&[0, u64::MAX as u128, if fail { u128::MAX } else { 6 }])),
            _ => Node::Fail,
        };
    }
    let len = |rng: &mut Rng| rng.below(5);
    let d = depth + 1;
    match rng.below(11) {
        0 => Node::Seq((0..len(rng)).map(|_| rand_node(rng, d, fail)).collect()),
        1 => Node::Tuple((0..len(rng)).map(|_| rand_node(rng, d, fail)).collect()),
        2 | 3 => Node::Map(
            (0..len(rng) + 1)
                .map(|_| (rand_key(rng, fail), rand_node(rng, d, fail)))
                .collect(),
        ),
        4 | 5 => Node::Struct(
            (0..len(rng) + 1)
                .map(|_| (rng.pick(STATIC_KEYS), rand_node(rng, d, fail)))
                .collect(),
        ),
        6 => Node::NewtypeVariant(rng.pick(STATIC_KEYS), Box::new(rand_node(rng, d, fail))),
        7 => Node::TupleVariant(
            rng.pick(STATIC_KEYS),
            (0..len(rng)).map(|_| rand_node(rng, d, fail)).collect(),
        ),
        8 => Node::StructVariant(
            rng.pick(STATIC_KEYS),
            (0..len(rng))
                .map(|_| (rng.pick(STATIC_KEYS), rand_node(rng, d, fail)))
                .collect(),
        ),
        9 => Node::Some(Box::new(rand_node(rng, d, fail))),
        _ => Node::NewtypeStruct(Box::new(rand_node(rng, d, fail))),
    }
}

#[test]
fn random_serializer_call_sequences() {
    let mut rng = Rng(12345);
    let (mut nonempty, mut errors) = (0, 0);
    for i in 0..20_000 {
        let fail = i % 4 == 0;
        let node = rand_node(&mut rng, 0, fail);
        let pre: Out = if rng.percent(20) {
            (0..rng.below(52))
                .map(|i| ("AWS::EC2::Image".into(), format!("ami-{i}")))
                .collect()
        } else {
            Vec::new()
        };
        let got = check_with(&node, &pre);
        nonempty += (got.len() > pre.len()) as usize;
        errors += serde_json::to_value(&node).is_err() as usize;
    }
    assert!(nonempty > 4000, "{nonempty}");
    assert!(errors > 300, "{errors}");
}

#[test]
fn random_json_values() {
    // serde_json::Value itself (already key-sorted) wrapped in unsorted maps.
    let mut rng = Rng(4242);
    for _ in 0..5000 {
        let node = rand_node(&mut rng, 0, false);
        let value = serde_json::to_value(&node).unwrap();
        let wrapped: HashMap<String, serde_json::Value> = (0..rng.below(4))
            .map(|_| (map_key(&mut rng), value.clone()))
            .collect();
        check(&value);
        check(&wrapped);
    }
}

#[test]
fn float_keys_match_serde_json() {
    let mut rng = Rng(5);
    let mut f64s: Vec<f64> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.1,
        1e15,
        1e16,
        9.999e15,
        1.5e16,
        1e-5,
        1e-6,
        1.25e-5,
        123.456,
        1e300,
        5e-324,
        f64::MAX,
        f64::MIN_POSITIVE,
        12345678901234567.0,
    ];
    let mut f32s: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        0.1,
        1e12,
        1e13,
        1.5e12,
        1e-6,
        1e-7,
        3.4028235e38,
        1e-45,
        16777216.0,
    ];
    for _ in 0..20_000 {
        f64s.push(f64::from_bits(rng.next()));
        f32s.push(f32::from_bits(rng.next() as u32));
        f64s.push((rng.below(1_000_000) as f64) * 10f64.powi(rng.below(40) as i32 - 20));
        f32s.push((rng.below(100_000) as f32) * 10f32.powi(rng.below(30) as i32 - 15));
    }
    let key_of = |k: KeyNode| -> Option<(String, String)> {
        let node = Node::Map(vec![(k, Node::Null)]);
        let expected = match serde_json::to_value(&node) {
            Ok(serde_json::Value::Object(m)) => m.keys().next().cloned().unwrap(),
            Ok(_) => unreachable!(),
            Err(_) => return None,
        };
        Some((expected, String::new()))
    };
    // Through the map-key serializer itself: its text decides the sort order.
    fn key_text<T: Serialize>(v: T) -> String {
        let mut got = String::new();
        v.serialize(KeySer { out: &mut got })
            .expect("a finite float key");
        got
    }
    for f in f64s.into_iter().filter(|f| f.is_finite()) {
        assert_eq!(
            Some(key_text(f)),
            key_of(KeyNode::F64(f)).map(|k| k.0),
            "{f:?}"
        );
    }
    for f in f32s.into_iter().filter(|f| f.is_finite()) {
        assert_eq!(
            Some(key_text(f)),
            key_of(KeyNode::F32(f)).map(|k| k.0),
            "{f:?}"
        );
    }
    assert!(key_of(KeyNode::F64(f64::INFINITY)).is_none());
}

/// The generated proto types themselves (prost's `Option` fields, enums as i32, oneofs).
#[test]
fn real_proto_messages() {
    let request = amisim_proto::RegisterImageRequest {
        name: "web-1".into(),
        root_device_name: "/dev/xvda".into(),
        block_device_mappings: vec![amisim_proto::BlockDeviceMapping {
            device_name: "/dev/xvda".into(),
            ebs: Some(amisim_proto::EbsBlockDevice {
                snapshot_id: "snap-0123456789abcdef0".into(),
                kms_key_id: "arn:aws:kms:us-east-1:123456789012:key/1234abcd".into(),
                volume_size: Some(8),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let got = check(&request);
    assert_eq!(got.len(), 2, "{got:?}");
    check(&amisim_proto::CopyImageRequest {
        source_image_id: "ami-0123456789abcdef0".into(),
        source_region: "us-east-1".into(),
        kms_key_id: "alias/mine".into(),
        ..Default::default()
    });
    check(&amisim_proto::RegisterImageResponse {
        image_id: "ami-0123456789abcdef0".into(),
    });
    check(&register_image_like());
}

fn register_image_like() -> RegisterImage {
    let ebs = |i: usize| Ebs {
        snapshot_id: format!("snap-0123456789abcde{i}"),
        kms_key_id: "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
            .into(),
        volume_size: 100,
        delete_on_termination: true,
        volume_type: "gp3".into(),
        encrypted: Some(true),
        outpost_id: None,
    };
    RegisterImage {
        name: "my-image-2024".into(),
        description: "An AMI registered from snapshots".into(),
        image_id: String::new(),
        source_snapshot_id: "snap-0aaaaaaaaaaaaaaaa".into(),
        kms_key_id: "alias/aws/ebs".into(),
        block_device_mappings: (0..8)
            .map(|i| Mapping {
                device_name: format!("/dev/sd{}", (b'a' + i as u8) as char),
                ebs: Some(ebs(i)),
                ..Default::default()
            })
            .collect(),
        tags: (0..5)
            .map(|i| (format!("tag{i}"), format!("value-{i}")))
            .collect(),
        size: 4096,
        dry_run: false,
        ..Default::default()
    }
}

/// Wide objects (many keys with hits, repeated keys) exercise the
/// many-groups path of the reordering.
#[test]
fn random_wide_objects() {
    let mut rng = Rng(777);
    let mut many_groups = 0;
    for i in 0..2000 {
        let width = rng.below(60);
        let node = if i % 2 == 0 {
            Node::Map(
                (0..width)
                    .map(|_| (rand_key(&mut rng, false), rand_node(&mut rng, 3, false)))
                    .collect(),
            )
        } else {
            Node::Struct(
                (0..width)
                    .map(|_| (rng.pick(STATIC_KEYS), rand_node(&mut rng, 3, false)))
                    .collect(),
            )
        };
        let got = check(&node);
        many_groups += (got.len() > 8) as usize;
        check(&Node::Seq(vec![node, Node::Str("x".into())]));
    }
    assert!(many_groups > 300, "{many_groups}");
}
