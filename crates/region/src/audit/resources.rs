//! The resources a request record names, collected from a message without rendering it.

use super::requests::{resources_of, to_json};

/// Appends to `out` what [`resources_of`] finds in the JSON of `message`.
pub fn collect_resources<T: serde::Serialize>(message: &T, out: &mut Vec<(String, String)>) {
    let found = resources_of(&[&to_json(message)]);
    for r in found {
        if out.len() < 50 && !out.contains(&r) {
            out.push(r);
        }
    }
}
