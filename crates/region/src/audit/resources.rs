//! Collects the AWS resources (`(type, id)` pairs) mentioned in a serializable
//! message, without building a `serde_json::Value`: a request record's `resources`
//! (ADR 0012), found on the recorder's thread.
//!
//! Specification: [`collect_resources`] appends to `out` exactly what
//! [`super::requests::walk`]`(&to_json(message), None, out)` appends (the tests check it): the
//! classified strings of the pruned JSON rendering of the message, visited depth
//! first, object keys in sorted order (serde_json's `Map` is a
//! `BTreeMap<String, Value>`), array elements in order, deduplicated against
//! everything already in `out`, and never growing `out` beyond
//! [`MAX_RESOURCES`].
//!
//! # How it works
//!
//! A custom [`serde::Serializer`] walks the message once. It remembers only the
//! key a value sits under (the last object key on its path; array elements
//! inherit the key of their array) and, for every string, asks
//! [`classify_ref`], which does not allocate. Hits are recorded in
//! serialization order: `(kind, range into an id arena)`.
//!
//! Serialization order is declaration order (structs) or iteration order
//! (maps, e.g. a `HashMap`), not the sorted order the reference visits. The
//! order is repaired bottom-up: every open object keeps, on a shared stack, one
//! entry per key it has emitted (`&'static str` for struct fields, a range into a
//! key-text arena for map keys) together with the index of the first hit found
//! under that key. When the object ends, the hits found inside it form one
//! contiguous group per key, each group already in its final (recursively sorted)
//! order. Sorting the groups by key (byte-wise, like `String`'s `Ord`) puts the
//! object's hits in the order a sorted-key depth-first walk would visit them;
//! arrays need nothing, they are visited in order anyway. This is the same as
//! sorting all hits by their path (object keys compare as strings, array
//! indices as numbers), but allocates no paths and touches only objects that
//! contain hits.
//!
//! Duplicate keys in one object (possible with `#[serde(flatten)]` collisions or
//! hand-written `Serialize` impls) are reproduced too: serde_json's
//! `Map::insert` keeps the *last* value, so the groups of earlier occurrences of
//! a key are dropped.
//!
//! Pruning (`to_json` drops null / `""` / `false` / `0` / empty containers)
//! cannot change the result, so it is not modelled: an empty string never
//! classifies, numbers/bools/nulls are never looked at, and a container is
//! pruned only when it holds nothing that survives pruning, hence no classified
//! string. Removing a key from an object does not change the relative order of
//! its other keys, nor the key the surviving strings sit under.
//!
//! # Errors
//!
//! When `serde_json::to_value` fails (a `Serialize` impl returns a custom error,
//! a map key is not string-like, a non-finite float key, an `i128`/`u128`
//! outside the `i64`/`u64` range, ...) the reference renders
//! `{"amisimError": "..."}`, whose only string sits under a key that never
//! classifies, so it appends nothing. `collect_resources` fails in exactly the
//! same situations and then also appends nothing (everything found so far is
//! discarded): this is exact equivalence, not a fallback. In the two situations
//! where serde_json would *panic* (`SerializeMap::serialize_value` without a
//! preceding `serialize_key`, or a `Display` impl returning an error inside
//! `collect_str`) this module never panics: it treats them as errors and appends
//! nothing.
//!
//! # Cost
//!
//! Strings that do not classify are never copied; struct keys are stored as
//! `&'static str`, map keys are copied once into an arena (they may be needed
//! for sorting); the scratch buffers live in a thread-local slot and are
//! reused across calls (dropped instead if they grew beyond 64 KiB). Objects
//! without hits only push/pop their keys. For an object with hits, only its
//! keys that have hits are sorted; overwritten duplicates are found with
//! equality checks (few such keys) or binary searches (many). The only
//! allocations in the steady state are the `String`s pushed onto `out`.
//!
//! Map keys are rendered like serde_json's `MapKeySerializer` (integers,
//! bools, chars, unit variants, newtype structs, finite floats in serde_json's
//! float format), since their text decides the sort order.
//!
//! Only `serde` and `std` are used.

use serde::ser::{self, Impossible, Serialize};
use std::cell::Cell;
use std::fmt::{self, Display, Write as _};

/// `out` never grows beyond this many entries.
pub const MAX_RESOURCES: usize = 50;

/// Appends to `out` the resources mentioned in `message`: exactly what
/// `walk(&to_json(message), None, out)` of the reference appends (same items,
/// same order, deduplicated against what is already in `out`, `out` capped at
/// [`MAX_RESOURCES`] entries). Never panics; see the module docs for errors.
pub fn collect_resources<T: Serialize + ?Sized>(message: &T, out: &mut Vec<(String, String)>) {
    if out.len() >= MAX_RESOURCES {
        return; // The reference cannot append anything either.
    }
    // Reuse this thread's buffers (a nested call, from inside a `Serialize`
    // impl, finds the slot empty and uses fresh ones).
    let mut st = CACHE
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    st.clear();
    if message
        .serialize(Ser {
            st: &mut st,
            key: None,
        })
        .is_ok()
    {
        for hit in &st.found {
            if out.len() >= MAX_RESOURCES {
                break;
            }
            let id = st.ids.get(hit.start..hit.end).unwrap_or_default();
            if !out.iter().any(|(k, v)| v == id && k == hit.kind) {
                out.push((hit.kind.to_string(), id.to_string()));
            }
        }
    }
    if st.retained_bytes() <= MAX_CACHED_BYTES {
        let _ = CACHE.try_with(|c| c.set(Some(st)));
    }
}

thread_local! {
    static CACHE: Cell<Option<State>> = const { Cell::new(None) };
}

/// Buffers grown beyond this are freed rather than kept for the next call.
const MAX_CACHED_BYTES: usize = 64 * 1024;

/// Classifies a string `value` found under the object key `key`, returning the
/// resource type and id. Same semantics as the reference `classify`.
pub fn classify(key: &str, value: &str) -> Option<(String, String)> {
    classify_ref(key, value).map(|(kind, id)| (kind.to_string(), id.to_string()))
}

/// Non-allocating [`classify`]: the id is a slice of `value`.
pub fn classify_ref<'v>(key: &str, value: &'v str) -> Option<(&'static str, &'v str)> {
    if matches!(key, "keyId" | "kmsKeyId" | "targetKeyId") {
        if value.is_empty() || value.starts_with("alias/") || value.contains(":alias/") {
            return None;
        }
        let id = value
            .rsplit_once(":key/")
            .map(|(_, id)| id)
            .unwrap_or(value);
        return Some(("AWS::KMS::Key", id));
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
        .then_some((kind, value))
}

/// Whether [`classify_ref`] can return `Some` for some value under `key`.
fn key_may_classify(key: &str) -> bool {
    key.ends_with("Id")
        || key.ends_with("Ids")
        || matches!(key, "keyId" | "kmsKeyId" | "targetKeyId")
}

// ---------------------------------------------------------------------------
// Collection state.

/// An object key: a struct field / variant name, or map-key text in
/// `State::key_text`.
#[derive(Clone, Copy)]
enum Name {
    Static(&'static str),
    Text(usize, usize),
}

impl Name {
    #[inline]
    fn get(self, key_text: &str) -> &str {
        match self {
            Name::Static(s) => s,
            Name::Text(a, b) => key_text.get(a..b).unwrap_or_default(),
        }
    }
}

/// One key emitted by a currently open object; its hits are
/// `found[first..next entry's first (or found.len())]`.
struct Entry {
    name: Name,
    first: usize,
}

/// A classified string: resource type and the id's range in `State::ids`.
#[derive(Clone, Copy)]
struct Hit {
    kind: &'static str,
    start: usize,
    end: usize,
}

#[derive(Default)]
struct State {
    /// Stack of the keys emitted by all open objects (innermost last).
    keys: Vec<Entry>,
    /// Arena holding the text of map keys of open objects.
    key_text: String,
    /// Hits, in serialization order except that every closed object's hits
    /// are already in sorted-walk order.
    found: Vec<Hit>,
    /// Arena holding the ids of hits.
    ids: String,
    /// Scratch buffers for `reorder` and `collect_str`.
    groups: Vec<Group>,
    reordered: Vec<Hit>,
    text: String,
}

impl State {
    fn clear(&mut self) {
        self.keys.clear();
        self.key_text.clear();
        self.found.clear();
        self.ids.clear();
    }

    fn retained_bytes(&self) -> usize {
        use std::mem::size_of;
        self.keys.capacity() * size_of::<Entry>()
            + self.key_text.capacity()
            + (self.found.capacity() + self.reordered.capacity()) * size_of::<Hit>()
            + self.ids.capacity()
            + self.groups.capacity() * size_of::<Group>()
            + self.text.capacity()
    }

    #[inline]
    fn string(&mut self, key: Option<Name>, value: &str) {
        let Some(key) = key else { return };
        if let Some((kind, id)) = classify_ref(key.get(&self.key_text), value) {
            let start = self.ids.len();
            self.ids.push_str(id);
            self.found.push(Hit {
                kind,
                start,
                end: self.ids.len(),
            });
        }
    }

    fn may_classify(&self, key: Option<Name>) -> bool {
        key.is_some_and(|k| key_may_classify(k.get(&self.key_text)))
    }

    /// Closes the object whose frame started at `keys0`/`text0`/`found0`:
    /// puts its hits in sorted-key order, dropping overwritten duplicate keys.
    fn end_object(&mut self, keys0: usize, text0: usize, found0: usize) {
        if self.found.len() > found0 && self.keys.len() > keys0 {
            self.reorder(keys0, found0);
        }
        self.keys.truncate(keys0);
        self.key_text.truncate(text0);
    }

    /// See [`State::end_object`]. Only objects with hits get here, and only
    /// the keys with hits ("groups") are sorted; the other keys are merely
    /// compared against them to find overwritten duplicates.
    fn reorder(&mut self, keys0: usize, found0: usize) {
        let State {
            keys,
            key_text,
            found,
            groups,
            reordered,
            ..
        } = self;
        let entries = keys.get(keys0..).unwrap_or_default();
        let name = |i: usize| entries[i].name.get(key_text);
        // Non-empty groups; entry i's hits are found[first_i..first_{i+1}].
        groups.clear();
        let mut end = found.len();
        for (i, e) in entries.iter().enumerate().rev() {
            if e.first < end {
                groups.push(Group {
                    entry: i,
                    start: e.first,
                    end,
                    live: true,
                });
                end = e.first;
            }
        }
        if let [g] = groups.as_slice() {
            // Common case: all hits sit under one key, already in order,
            // unless a later occurrence of the key overwrote them.
            let n = name(g.entry);
            if entries[g.entry + 1..]
                .iter()
                .any(|e| e.name.get(key_text) == n)
            {
                found.truncate(found0);
            }
            return;
        }
        // Keys compare like `String`s (bytes); equal keys by position.
        groups
            .sort_unstable_by(|a, b| name(a.entry).cmp(name(b.entry)).then(a.entry.cmp(&b.entry)));
        // serde_json keeps the last value of a repeated key: a group is dead
        // if the same key occurs again later in the object.
        for p in 1..groups.len() {
            if name(groups[p - 1].entry) == name(groups[p].entry) {
                groups[p - 1].live = false;
            }
        }
        if groups.len() <= 8 {
            // Few groups: compare each with the keys after it (equality
            // checks, which mostly stop at differing lengths).
            for g in groups.iter_mut().filter(|g| g.live) {
                let n = name(g.entry);
                g.live = !entries[g.entry + 1..]
                    .iter()
                    .any(|e| e.name.get(key_text) == n);
            }
        } else {
            // Many groups: binary-search every key among them; the nearest
            // group before it with the same key is overwritten by it.
            for j in 0..entries.len() {
                let nj = name(j);
                let p = groups.partition_point(|g| (name(g.entry), g.entry) < (nj, j));
                if let Some(g) = p.checked_sub(1).and_then(|p| groups.get_mut(p)) {
                    if name(g.entry) == nj {
                        g.live = false;
                    }
                }
            }
        }
        // Rewrite the hits only if the order changed.
        let mut next = found0;
        let identity = groups.iter().filter(|g| g.live).all(|g| {
            let contiguous = g.start == next;
            next = g.end;
            contiguous
        }) && next == found.len();
        if !identity {
            reordered.clear();
            for g in groups.iter().filter(|g| g.live) {
                reordered.extend_from_slice(found.get(g.start..g.end).unwrap_or_default());
            }
            found.truncate(found0);
            found.extend_from_slice(reordered);
        }
    }
}

/// The hits `found[start..end]` found under the `entry`-th key of an object.
struct Group {
    entry: usize,
    start: usize,
    end: usize,
    live: bool,
}

// ---------------------------------------------------------------------------
// Error.

/// Any serialization failure; collection then appends nothing.
#[derive(Debug)]
struct Error;

impl Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("message cannot be rendered as JSON")
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: Display>(_msg: T) -> Self {
        Error
    }
}

// ---------------------------------------------------------------------------
// Value serializer: `key` is the key the value sits under (None at top level
// and in arrays reached without any object key).

struct Ser<'a> {
    st: &'a mut State,
    key: Option<Name>,
}

/// Arrays (seq, tuple, tuple struct, and the array of a tuple variant):
/// elements inherit the key.
struct Seq<'a> {
    st: &'a mut State,
    key: Option<Name>,
}

/// Objects (struct, map, the inner object of a struct variant).
struct Obj<'a> {
    st: &'a mut State,
    keys0: usize,
    text0: usize,
    found0: usize,
    pending: Option<Name>,
}

impl<'a> Obj<'a> {
    fn new(st: &'a mut State) -> Self {
        let (keys0, text0, found0) = (st.keys.len(), st.key_text.len(), st.found.len());
        Obj {
            st,
            keys0,
            text0,
            found0,
            pending: None,
        }
    }

    #[inline]
    fn entry<T: Serialize + ?Sized>(&mut self, name: Name, value: &T) -> Result<(), Error> {
        let first = self.st.found.len();
        self.st.keys.push(Entry { name, first });
        value.serialize(Ser {
            st: &mut *self.st,
            key: Some(name),
        })
    }

    fn finish(self) -> Result<(), Error> {
        self.st.end_object(self.keys0, self.text0, self.found0);
        Ok(())
    }
}

/// Serializer methods for values that can never name a resource.
macro_rules! ignore_scalars {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method(self, _: $ty) -> Result<(), Error> {
            Ok(())
        }
    )*};
}

fn out_of_range() -> Error {
    Error
}

impl<'a> ser::Serializer for Ser<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Obj<'a>;
    type SerializeStruct = Obj<'a>;
    type SerializeStructVariant = Obj<'a>;

    // Numbers and bools hold no resource (a non-finite float becomes null: no error either).
    ignore_scalars!(
        serialize_bool: bool,
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_f32: f32,
        serialize_f64: f64
    );
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        // serde_json (without arbitrary_precision) rejects what fits in neither.
        if u64::try_from(v).is_ok() || i64::try_from(v).is_ok() {
            Ok(())
        } else {
            Err(out_of_range())
        }
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        u64::try_from(v).map(|_| ()).map_err(|_| out_of_range())
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        // serde_json renders a char as a one-char string.
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.st.string(self.key, v);
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Error> {
        Ok(()) // An array of numbers.
    }
    fn serialize_none(self) -> Result<(), Error> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.serialize_str(variant) // Like serde_json: the variant name as a string.
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        // `{"Variant": value}`: a one-key object, nothing to sort.
        value.serialize(Ser {
            st: self.st,
            key: Some(Name::Static(variant)),
        })
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Seq<'a>, Error> {
        Ok(Seq {
            st: self.st,
            key: self.key,
        })
    }
    fn serialize_tuple(self, _: usize) -> Result<Seq<'a>, Error> {
        Ok(Seq {
            st: self.st,
            key: self.key,
        })
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Seq<'a>, Error> {
        Ok(Seq {
            st: self.st,
            key: self.key,
        })
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Seq<'a>, Error> {
        // `{"Variant": [fields...]}`.
        Ok(Seq {
            st: self.st,
            key: Some(Name::Static(variant)),
        })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Obj<'a>, Error> {
        Ok(Obj::new(self.st))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Obj<'a>, Error> {
        Ok(Obj::new(self.st))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _variant: &'static str,
        _: usize,
    ) -> Result<Obj<'a>, Error> {
        // `{"Variant": {fields...}}`: the outer object has one key and no
        // string directly under it; the fields form the inner object.
        Ok(Obj::new(self.st))
    }
    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result<(), Error> {
        if !self.st.may_classify(self.key) {
            return Ok(()); // Skip formatting: the string could not classify.
        }
        let mut text = std::mem::take(&mut self.st.text);
        text.clear();
        let res = write!(text, "{value}").map_err(|_| Error);
        if res.is_ok() {
            self.st.string(self.key, &text);
        }
        self.st.text = text;
        res
    }
}

impl ser::SerializeSeq for Seq<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(Ser {
            st: &mut *self.st,
            key: self.key,
        })
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

/// Tuples, tuple structs and tuple variants are arrays in JSON: a [`Seq`] each.
macro_rules! like_a_seq {
    ($($tr:ident :: $method:ident),*) => {$(
        impl ser::$tr for Seq<'_> {
            type Ok = ();
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                ser::SerializeSeq::serialize_element(self, value)
            }
            fn end(self) -> Result<(), Error> {
                Ok(())
            }
        }
    )*};
}

like_a_seq!(
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Obj<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        let start = self.st.key_text.len();
        key.serialize(KeySer {
            out: &mut self.st.key_text,
        })?;
        self.pending = Some(Name::Text(start, self.st.key_text.len()));
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        // serde_json panics here without a key; we report an error instead.
        let name = self.pending.take().ok_or(Error)?;
        self.entry(name, value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

/// Structs and struct variants are objects in JSON: an [`Obj`] each, keyed by field name.
macro_rules! like_an_object {
    ($($tr:ident),*) => {$(
        impl ser::$tr for Obj<'_> {
            type Ok = ();
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                self.entry(Name::Static(key), value)
            }
            fn end(self) -> Result<(), Error> {
                self.finish()
            }
        }
    )*};
}

like_an_object!(SerializeStruct, SerializeStructVariant);

// ---------------------------------------------------------------------------
// Map keys: rendered like serde_json's `MapKeySerializer` (strings, chars,
// bools, integers, finite floats, unit variants, newtype structs thereof);
// everything else is an error there, so it is one here.

/// An integer map key is its decimal text, as in serde_json.
macro_rules! display_integers {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method(self, v: $ty) -> Result<(), Error> {
            self.display(v)
        }
    )*};
}

struct KeySer<'a> {
    out: &'a mut String,
}

impl KeySer<'_> {
    fn display(self, v: impl Display) -> Result<(), Error> {
        write!(self.out, "{v}").map_err(|_| Error)
    }

    /// A float key as serde_json writes it (`fixed`: the exponents written without one); a
    /// non-finite one is an error there.
    fn float(
        self,
        finite: bool,
        negative: bool,
        zero: bool,
        sci: impl FnOnce() -> String,
        fixed: std::ops::RangeInclusive<i32>,
    ) -> Result<(), Error> {
        if !finite {
            return Err(Error);
        }
        float_key(self.out, negative, zero, &sci(), fixed);
        Ok(())
    }
}

impl ser::Serializer for KeySer<'_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Impossible<(), Error>;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    display_integers!(
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128
    );
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.float(
            v.is_finite(),
            v.is_sign_negative(),
            v == 0.0,
            || shortest_sci(v.abs()),
            -6..=12,
        )
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.float(
            v.is_finite(),
            v.is_sign_negative(),
            v == 0.0,
            || shortest_sci(v.abs()),
            -5..=15,
        )
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.out.push(v);
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.out.push_str(v);
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Error> {
        Err(Error)
    }
    fn serialize_none(self) -> Result<(), Error> {
        Err(Error)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Error> {
        Err(Error)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        Err(Error)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Err(Error)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.out.push_str(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Error> {
        Err(Error)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(Error)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(Error)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(Error)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(Error)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(Error)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        Err(Error)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(Error)
    }
    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result<(), Error> {
        self.display(value)
    }
}

/// Shortest round-trip scientific notation (`d.ddde-X`) of a finite float,
/// breaking ties between two equally near shortest candidates to even like
/// serde_json's formatter does (Rust's `{:e}` breaks them upwards).
fn shortest_sci<F>(v: F) -> String
where
    F: fmt::LowerExp + std::str::FromStr + PartialEq + Copy,
{
    let short = format!("{v:e}");
    let digits = short
        .split('e')
        .next()
        .unwrap_or_default()
        .bytes()
        .filter(u8::is_ascii_digit)
        .count();
    if digits > 1 {
        // Exact formatting with a precision rounds half to even.
        let even = format!("{v:.*e}", digits - 1);
        if even != short && even.parse::<F>().is_ok_and(|p| p == v) {
            return even;
        }
    }
    short
}

/// Writes a finite float map key the way serde_json does (its `zmij`
/// formatter): shortest round-trip digits, plain notation when the decimal
/// exponent is in `fixed` (always with a fractional part, `1.0`), else
/// `d.ddde+X` / `de-X`. `sci` is [`shortest_sci`] of the absolute value.
/// Only the ordering of sibling keys depends on this text (such a key never
/// classifies).
fn float_key(
    out: &mut String,
    negative: bool,
    zero: bool,
    sci: &str,
    fixed: std::ops::RangeInclusive<i32>,
) {
    if negative {
        out.push('-');
    }
    if zero {
        out.push_str("0.0");
        return;
    }
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (d0, rest) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = [d0, rest].concat();
    let n = digits.len() as i32;
    if fixed.contains(&exp) {
        if n - 1 <= exp {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (exp + 1 - n) as usize));
            out.push_str(".0");
        } else if exp >= 0 {
            let (int, frac) = digits.split_at(exp as usize + 1);
            out.push_str(int);
            out.push('.');
            out.push_str(frac);
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(d0);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let _ = write!(
            out,
            "e{}{}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    }
}

#[cfg(test)]
mod tests;
