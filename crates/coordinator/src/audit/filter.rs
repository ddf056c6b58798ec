//! The server-side filters of the merged `Audit.StreamEvents` (event type, resource id,
//! account), applied after the causal merge so that filtering never changes the order.
//!
//! The same rules as a region node's: both use [`amisim_core::event_filter`].

pub use amisim_core::event_filter::{payload_name, EventFilter};

#[cfg(test)]
mod tests {
    use super::*;
    use amisim_proto::event::Payload;
    use amisim_proto::Event;
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
