//! The event filter of `Audit.StreamEvents` (event type, resource id, account), shared by a
//! region node (`amisim_region::audit::stream`) and the coordinator's merged stream
//! (`amisim_coordinator::audit::filter`): payload names match in snake or Pascal case, a
//! resource id matches a whole string field of the payload, the account is the envelope's.
//!
//! Pure over [`amisim_proto::Event`].

use amisim_proto::Event;

/// The payload's name as in `events.proto`, Pascal case (`ImageRegistered`); empty for an
/// event without a payload.
pub fn payload_name(event: &Event) -> String {
    // prost derives Debug for the oneof as `Variant(Message { .. })`: the variant is the
    // payload's name, so this stays right for payloads added later.
    event
        .payload
        .as_ref()
        .map(|p| {
            let debug = format!("{p:?}");
            debug.split('(').next().unwrap_or_default().to_string()
        })
        .unwrap_or_default()
}

/// `ImageRegistered`, `image_registered` and `imageregistered` all normalize to the same.
fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// What a stream keeps: every filter that is set must match (AND); event types match if any
/// of them does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    types: Vec<String>,
    resource_id: Option<String>,
    account_id: Option<String>,
}

impl EventFilter {
    pub fn new(types: &[String], resource_id: &str, account_id: &str) -> Self {
        let nonempty = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        EventFilter {
            types: types
                .iter()
                .map(|t| normalize(t.trim()))
                .filter(|t| !t.is_empty())
                .collect(),
            resource_id: nonempty(resource_id),
            account_id: nonempty(account_id),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty() && self.resource_id.is_none() && self.account_id.is_none()
    }

    pub fn matches(&self, event: &Event) -> bool {
        if let Some(a) = &self.account_id {
            if &event.account_id != a {
                return false;
            }
        }
        if !self.types.is_empty() {
            let name = normalize(&payload_name(event));
            if !self.types.contains(&name) {
                return false;
            }
        }
        if let Some(id) = &self.resource_id {
            // Any string field of the payload (ids, lists of ids, nested messages) that is
            // exactly the id: prost's Debug prints every string field quoted.
            let Some(payload) = &event.payload else {
                return false;
            };
            let debug = format!("{payload:?}");
            if !debug.contains(&format!("{id:?}")) {
                return false;
            }
        }
        true
    }
}
