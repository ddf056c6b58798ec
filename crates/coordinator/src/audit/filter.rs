//! The server-side filters of the merged `Audit.StreamEvents` (event type, resource id,
//! account), applied after the causal merge so that filtering never changes the order.
//!
//! The same rules as a region node's (`amisim_region::audit::stream`), which this crate does not
//! link (the coordinator talks to the nodes over gRPC only): payload names match in snake or
//! Pascal case, a resource id matches a whole string field of the payload, the account is the
//! envelope's.

use amisim_proto::Event;

/// The payload's name as in `events.proto`, Pascal case; empty without a payload.
pub fn payload_name(event: &Event) -> String {
    // prost derives Debug for the oneof as `Variant(Message { .. })`.
    event
        .payload
        .as_ref()
        .map(|p| {
            let debug = format!("{p:?}");
            debug.split('(').next().unwrap_or_default().to_string()
        })
        .unwrap_or_default()
}

fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// What a stream keeps: every filter that is set must match; event types match if any does.
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
        if !self.types.is_empty() && !self.types.contains(&normalize(&payload_name(event))) {
            return false;
        }
        if let Some(id) = &self.resource_id {
            let Some(payload) = &event.payload else {
                return false;
            };
            // prost's Debug prints every string field quoted: a whole-field match.
            if !format!("{payload:?}").contains(&format!("{id:?}")) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amisim_proto::event::Payload;
    use amisim_proto::{ImageAvailable, TagsCreated};

    #[test]
    fn filters_as_on_a_node() {
        let avail = Event {
            account_id: "system".into(),
            payload: Some(Payload::ImageAvailable(ImageAvailable {
                image_id: "ami-1".into(),
            })),
            ..Default::default()
        };
        let tags = Event {
            account_id: "111122223333".into(),
            payload: Some(Payload::TagsCreated(TagsCreated {
                resource_ids: vec!["ami-1".into(), "snap-2".into()],
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(EventFilter::new(&[], "", "").matches(&avail));
        assert!(EventFilter::new(&["image_available".into()], "", "").matches(&avail));
        assert!(!EventFilter::new(&["ImageAvailable".into()], "", "").matches(&tags));
        assert!(EventFilter::new(&[], "snap-2", "").matches(&tags));
        assert!(!EventFilter::new(&[], "ami-", "").matches(&avail));
        assert!(!EventFilter::new(&[], "", "system").matches(&tags));
    }
}
