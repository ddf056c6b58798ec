//! The two image collections of the projection, laid out for the writer's copy-on-write.
//!
//! The writer publishes a new state after every group commit, so each round's first write into
//! a node of a persistent map copies that node: its 64 entries. An entry that holds a
//! reference-counted pointer costs a cache miss on a cold counter when copied and again when the
//! superseded copy is freed; under a RegisterImage load that was most of the writer's CPU
//! (`cargo bench -p amisim-core --bench core -- writer`). So:
//!
//! - [`ImageTable`] keeps the images in creation order (a slot number per image) and a
//!   separate id → slot index of inline bytes. A new image lands in the rightmost node of the
//!   slot map, next to the images created just before it, and so does the `available` change a
//!   moment later: a round of writes copies one path of recent, warm entries instead of one
//!   node of cold entries per image. Copying an index node copies bytes.
//! - [`ImageNames`] (the `InvalidAMIName.Duplicate` index) files image ids under the hashes of
//!   owner and name (integers, inline); a lookup confirms owner and name on the image itself.
//!
//! Both read like the maps they replace: by id, in id order. Slots are not part of the state's
//! meaning: equality, serialization (a map of id → image, as before) and therefore the digest
//! ignore them, and a state read back from a checkpoint numbers its images afresh.

use std::fmt;
use std::hash::Hasher;
use std::sync::Arc;

use imbl::OrdMap;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::state::{Image, ImageState, InlineId};

/// Every image of the region by id (deregistered ones until they are forgotten).
#[derive(Clone, Default)]
pub struct ImageTable {
    /// id → slot. Entries are inline bytes.
    index: OrdMap<InlineId, u64>,
    /// slot → image, slots in creation order.
    slots: OrdMap<u64, Arc<Image>>,
    /// The slot of the next new image.
    next_slot: u64,
}

impl ImageTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Image>> {
        self.slots.get(self.index.get(id)?)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// The image to change in place (`Arc::make_mut` copies it first if a published state
    /// shares it).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Arc<Image>> {
        let slot = *self.index.get(id)?;
        self.slots.get_mut(&slot)
    }

    /// Inserts or replaces the image `id`; a replaced image keeps its slot. Returns the image it
    /// replaced.
    pub fn insert(&mut self, id: InlineId, image: Arc<Image>) -> Option<Arc<Image>> {
        match self.index.get(id.as_str()) {
            Some(slot) => self.slots.insert(*slot, image),
            None => {
                self.push(id, image);
                None
            }
        }
    }

    /// Inserts an image known to be new, in a new slot: one search of the index instead of
    /// two. If `id` was there after all, its old slot is dropped (nothing is left behind).
    fn push(&mut self, id: InlineId, image: Arc<Image>) {
        let slot = self.next_slot;
        self.next_slot += 1;
        if let Some(old) = self.index.insert(id, slot) {
            self.slots.remove(&old);
        }
        self.slots.insert(slot, image);
    }

    pub fn remove(&mut self, id: &str) -> Option<Arc<Image>> {
        let slot = self.index.remove(id)?;
        self.slots.remove(&slot)
    }

    /// Ids and images in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&InlineId, &Arc<Image>)> + '_ {
        self.index
            .iter()
            .filter_map(|(id, slot)| Some((id, self.slots.get(slot)?)))
    }

    /// Ids in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &InlineId> + '_ {
        self.index.keys()
    }

    /// Images in id order.
    pub fn values(&self) -> impl Iterator<Item = &Arc<Image>> + '_ {
        self.iter().map(|(_, image)| image)
    }

    /// The images by slot, from the first slot in use, when the slots in use are dense enough
    /// (at most twice as many slot numbers as images) for a vector of them to be small.
    fn slot_vec(&self) -> Option<(u64, Vec<Option<&Arc<Image>>>)> {
        let &(first, _) = self.slots.get_min()?;
        let &(last, _) = self.slots.get_max()?;
        let span = usize::try_from(last - first).ok()?.checked_add(1)?;
        if span > self.slots.len().saturating_mul(2) {
            return None;
        }
        let mut by_slot = vec![None; span];
        for (slot, image) in self.slots.iter() {
            by_slot[(slot - first) as usize] = Some(image);
        }
        Some((first, by_slot))
    }

    /// Images in creation order: a scan that does not need id order (a count, an `any`) reads
    /// the images without the index. Anything whose result depends on the order (events,
    /// messages naming an image, pages) uses [`ImageTable::values`]: slots are numbered afresh
    /// when a checkpoint is read back.
    pub fn values_unordered(&self) -> impl Iterator<Item = &Arc<Image>> + '_ {
        self.slots.values()
    }
}

impl std::ops::Index<&str> for ImageTable {
    type Output = Arc<Image>;

    /// The image `id`. Panics if there is none (tests; code uses [`ImageTable::get`]).
    fn index(&self, id: &str) -> &Arc<Image> {
        match self.get(id) {
            Some(image) => image,
            None => panic!("no image {id} in the table"),
        }
    }
}

impl PartialEq for ImageTable {
    /// The same images under the same ids (slots do not matter).
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for ImageTable {}

impl fmt::Debug for ImageTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A map of id → image in id order: the encoding of the map this table replaced, so the digest
/// and checkpoints read the same.
impl Serialize for ImageTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        match self.slot_vec() {
            // One walk of each map instead of a search of the slot map per image: a checkpoint
            // of a million images encodes in a fraction of the time.
            Some((first, by_slot)) => {
                for (id, slot) in self.index.iter() {
                    let image = slot
                        .checked_sub(first)
                        .and_then(|i| by_slot.get(i as usize).copied().flatten())
                        .or_else(|| self.slots.get(slot));
                    if let Some(image) = image {
                        map.serialize_entry(id, image)?;
                    }
                }
            }
            None => {
                for (id, image) in self.iter() {
                    map.serialize_entry(id, image)?;
                }
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ImageTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TableVisitor;

        impl<'de> Visitor<'de> for TableVisitor {
            type Value = ImageTable;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of image id to image")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<ImageTable, A::Error> {
                // A checkpoint holds each id once: `push` (one index search per image) keeps a
                // restart of a million images from searching the index twice for each.
                let mut table = ImageTable::new();
                while let Some((id, image)) = access.next_entry::<InlineId, Arc<Image>>()? {
                    table.push(id, image);
                }
                Ok(table)
            }
        }

        deserializer.deserialize_map(TableVisitor)
    }
}

/// The names of the images not deregistered, by owner (`InvalidAMIName.Duplicate`).
///
/// Filed under `(hash of the owner, hash of the name)`: sixteen bytes that compare as integers,
/// so a random insert copies small, inline entries and a lookup is one search. Two pairs can
/// share the hashes: the one filed later goes to `collisions` (keyed by the strings, normally
/// empty), and [`ImageNames::find`] confirms owner and name on the image either way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageNames {
    by_hash: OrdMap<(u64, u64), InlineId>,
    collisions: OrdMap<(InlineId, String), InlineId>,
}

impl ImageNames {
    /// The hash a string is filed under: 64-bit FNV-1a of its UTF-8 bytes (a fixed function, so
    /// a checkpoint reads back the same).
    pub fn hash(s: &str) -> u64 {
        let mut h = fnv::FnvHasher::default();
        h.write(s.as_bytes());
        h.finish()
    }

    fn key(owner: &str, name: &str) -> (u64, u64) {
        (Self::hash(owner), Self::hash(name))
    }

    /// Files `image_id` under its owner and name.
    pub fn insert(&mut self, owner: &str, name: &str, image_id: &str) {
        match self.by_hash.entry(Self::key(owner, name)) {
            imbl::ordmap::Entry::Vacant(v) => {
                v.insert(image_id.into());
            }
            imbl::ordmap::Entry::Occupied(o) if o.get() == image_id => {}
            imbl::ordmap::Entry::Occupied(_) => {
                self.collisions
                    .insert((owner.into(), name.to_string()), image_id.into());
            }
        }
    }

    /// Removes the entry of `image_id` under its owner and name (if there is one).
    pub fn remove(&mut self, owner: &str, name: &str, image_id: &str) {
        let key = Self::key(owner, name);
        if self.by_hash.get(&key).is_some_and(|id| id == image_id) {
            self.by_hash.remove(&key);
        }
        if self.collisions.is_empty() {
            return;
        }
        let strings = (InlineId::from(owner), name.to_string());
        if self
            .collisions
            .get(&strings)
            .is_some_and(|id| id == image_id)
        {
            self.collisions.remove(&strings);
        }
    }

    /// The image of `owner` named `name` that is not deregistered, if any.
    pub fn find<'a>(&self, images: &'a ImageTable, owner: &str, name: &str) -> Option<&'a Image> {
        let is_it = |image: &&Image| {
            image.owner() == owner
                && image.registered.name == name
                && image.state != ImageState::Deregistered
        };
        let filed = self
            .by_hash
            .get(&Self::key(owner, name))
            .and_then(|id| images.get(id))
            .map(|image| &**image)
            .filter(is_it);
        filed.or_else(|| {
            if self.collisions.is_empty() {
                return None;
            }
            self.collisions
                .get(&(InlineId::from(owner), name.to_string()))
                .and_then(|id| images.get(id))
                .map(|image| &**image)
                .filter(is_it)
        })
    }

    /// Names filed (both tables).
    pub fn len(&self) -> usize {
        self.by_hash.len() + self.collisions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty() && self.collisions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ImageRegisteredData, Tags};
    use imbl::OrdSet;

    fn image(id: &str, owner: &str, name: &str) -> Arc<Image> {
        Arc::new(Image {
            registered: Arc::new(ImageRegisteredData {
                image_id: id.into(),
                owner_id: owner.into(),
                name: name.into(),
                ..ImageRegisteredData::default()
            }),
            state: ImageState::Available,
            state_reason: None,
            tags: Tags::new(),
            launch_permissions: OrdSet::new(),
            forget_at_ms: None,
            deprecation_time_ms: None,
        })
    }

    const OWNER: &str = "111122223333";

    /// A table filled in an order other than id order.
    fn table() -> ImageTable {
        let mut t = ImageTable::new();
        for id in [
            "ami-0000000000000000c",
            "ami-0000000000000000a",
            "ami-0000000000000000b",
        ] {
            t.insert(id.into(), image(id, OWNER, id));
        }
        t
    }

    #[test]
    fn reads_by_id_and_in_id_order_whatever_the_creation_order() {
        let t = table();
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            [
                "ami-0000000000000000a",
                "ami-0000000000000000b",
                "ami-0000000000000000c"
            ]
        );
        assert_eq!(
            t.values().map(|i| i.id()).collect::<Vec<_>>(),
            t.keys().map(|k| k.as_str()).collect::<Vec<_>>()
        );
        // Creation order.
        assert_eq!(
            t.values_unordered().map(|i| i.id()).collect::<Vec<_>>(),
            [
                "ami-0000000000000000c",
                "ami-0000000000000000a",
                "ami-0000000000000000b"
            ]
        );
        assert_eq!(t["ami-0000000000000000b"].id(), "ami-0000000000000000b");
        assert!(t.get("ami-0000000000000000d").is_none());
        assert!(t.contains_key("ami-0000000000000000a"));
    }

    #[test]
    fn replacing_and_removing_keep_the_index_and_the_slots_in_step() {
        let mut t = table();
        let old = t.insert(
            "ami-0000000000000000a".into(),
            image("ami-0000000000000000a", OWNER, "renamed"),
        );
        assert_eq!(
            old.map(|i| i.registered.name.clone()).as_deref(),
            Some("ami-0000000000000000a")
        );
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.values_unordered().count(),
            3,
            "a replaced image keeps its slot"
        );
        assert_eq!(t["ami-0000000000000000a"].registered.name, "renamed");

        Arc::make_mut(t.get_mut("ami-0000000000000000c").unwrap()).state = ImageState::Failed;
        assert_eq!(t["ami-0000000000000000c"].state, ImageState::Failed);

        assert!(t.remove("ami-0000000000000000b").is_some());
        assert!(t.remove("ami-0000000000000000b").is_none());
        assert_eq!(t.len(), 2);
        assert_eq!(t.values_unordered().count(), 2);
        assert!(t.get_mut("ami-0000000000000000b").is_none());
    }

    #[test]
    fn a_published_copy_does_not_see_later_changes() {
        let mut t = table();
        let published = t.clone();
        Arc::make_mut(t.get_mut("ami-0000000000000000a").unwrap()).state = ImageState::Failed;
        t.insert(
            "ami-0000000000000000d".into(),
            image("ami-0000000000000000d", OWNER, "d"),
        );
        assert_eq!(
            published["ami-0000000000000000a"].state,
            ImageState::Available
        );
        assert!(published.get("ami-0000000000000000d").is_none());
        assert_ne!(published, t);
    }

    #[test]
    fn equality_and_encoding_ignore_the_slots() {
        let t = table();
        let mut same = ImageTable::new();
        for (id, image) in t.iter() {
            same.insert(id.clone(), image.clone());
        }
        assert_eq!(t, same, "same images, other creation order");
        let bytes = bincode::serialize(&t).unwrap();
        assert_eq!(bytes, bincode::serialize(&same).unwrap());
        // The encoding of the map it replaced.
        let as_map: OrdMap<InlineId, Arc<Image>> =
            t.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(bytes, bincode::serialize(&as_map).unwrap());
        let back: ImageTable = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.values_unordered().count(), 3);
    }

    #[test]
    fn the_encoding_is_the_same_with_dense_and_sparse_slots() {
        // 40 images, then all but 6 removed: the slots in use span more than twice as many
        // numbers as there are images, so the encoder searches the slot map per image instead
        // of walking it into a vector. Both read as the id-ordered map.
        let mut t = ImageTable::new();
        for k in (0..40u64).rev() {
            let id = format!("ami-{:017x}", k * 7919 % 40);
            t.insert(id.as_str().into(), image(&id, OWNER, &id));
        }
        let dense = bincode::serialize(&t).unwrap();
        assert!(t.slot_vec().is_some(), "40 images in 40 slots are dense");
        let as_map = |t: &ImageTable| -> OrdMap<InlineId, Arc<Image>> {
            t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        assert_eq!(dense, bincode::serialize(&as_map(&t)).unwrap());
        let keep: Vec<InlineId> = t.keys().step_by(7).cloned().collect();
        for id in t.keys().cloned().collect::<Vec<_>>() {
            if !keep.contains(&id) {
                t.remove(id.as_str());
            }
        }
        assert_eq!(t.len(), 6);
        assert!(
            t.slot_vec().is_none(),
            "6 images spread over the 40 slots are sparse"
        );
        let sparse = bincode::serialize(&t).unwrap();
        assert_eq!(sparse, bincode::serialize(&as_map(&t)).unwrap());
        let back: ImageTable = bincode::deserialize(&sparse).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn a_map_with_an_id_twice_reads_back_as_the_last_one() {
        // Not what the serializer writes, but a decoder must not leave an orphaned slot.
        let a = image("ami-0000000000000000a", OWNER, "first");
        let b = image("ami-0000000000000000a", OWNER, "second");
        let mut bytes = 2u64.to_le_bytes().to_vec();
        for img in [&a, &b] {
            bytes.extend(bincode::serialize(&InlineId::from(img.id())).unwrap());
            bytes.extend(bincode::serialize(img).unwrap());
        }
        let t: ImageTable = bincode::deserialize(&bytes).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.values_unordered().count(), 1);
        assert_eq!(t["ami-0000000000000000a"].registered.name, "second");
    }

    #[test]
    fn names_are_found_by_owner_and_exact_name() {
        let t = table();
        let mut names = ImageNames::default();
        for image in t.values() {
            names.insert(image.owner(), &image.registered.name, image.id());
        }
        let found = names
            .find(&t, OWNER, "ami-0000000000000000b")
            .map(|i| i.id());
        assert_eq!(found, Some("ami-0000000000000000b"));
        assert!(names
            .find(&t, "444455556666", "ami-0000000000000000b")
            .is_none());
        assert!(names.find(&t, OWNER, "ami-0000000000000000").is_none());
        // Removing under another image id leaves the entry.
        names.remove(OWNER, "ami-0000000000000000b", "ami-0000000000000000c");
        assert!(names.find(&t, OWNER, "ami-0000000000000000b").is_some());
        names.remove(OWNER, "ami-0000000000000000b", "ami-0000000000000000b");
        assert!(names.find(&t, OWNER, "ami-0000000000000000b").is_none());
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn two_names_under_one_hash_are_told_apart() {
        // "two" filed as if its hashes were those of "one" (a collision): the image's own name
        // tells them apart, and the later one goes to the collision table.
        let mut t = ImageTable::new();
        t.insert(
            "ami-00000000000000001".into(),
            image("ami-00000000000000001", OWNER, "one"),
        );
        t.insert(
            "ami-00000000000000002".into(),
            image("ami-00000000000000002", OWNER, "two"),
        );
        let mut names = ImageNames::default();
        names.insert(OWNER, "one", "ami-00000000000000001");
        // What insert does when "two" lands on the key "one" holds.
        names.by_hash.insert(
            ImageNames::key(OWNER, "two"),
            "ami-00000000000000001".into(),
        );
        names.insert(OWNER, "two", "ami-00000000000000002");
        assert_eq!(names.collisions.len(), 1, "filed under the strings");
        assert_eq!(
            names.find(&t, OWNER, "two").map(|i| i.id()),
            Some("ami-00000000000000002")
        );
        assert_eq!(
            names.find(&t, OWNER, "one").map(|i| i.id()),
            Some("ami-00000000000000001")
        );
        names.remove(OWNER, "two", "ami-00000000000000002");
        assert!(names.collisions.is_empty());
        assert!(names.find(&t, OWNER, "two").is_none());
        // Another owner's image under the same name is not this owner's.
        assert!(names.find(&t, "444455556666", "one").is_none());
    }

    #[test]
    fn a_deregistered_image_does_not_hold_its_name() {
        let mut t = table();
        let mut names = ImageNames::default();
        names.insert(OWNER, "ami-0000000000000000a", "ami-0000000000000000a");
        Arc::make_mut(t.get_mut("ami-0000000000000000a").unwrap()).state = ImageState::Deregistered;
        assert!(names.find(&t, OWNER, "ami-0000000000000000a").is_none());
    }

    #[test]
    fn the_name_hash_is_fnv1a() {
        // Reference values of 64-bit FNV-1a: the checkpoint format depends on them.
        assert_eq!(ImageNames::hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(ImageNames::hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
