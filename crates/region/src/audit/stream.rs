//! Server-side filters of `Audit.StreamEvents`: the rules live in
//! [`amisim_core::event_filter`], shared with the coordinator's merged stream.

pub use amisim_core::event_filter::{payload_name, EventFilter};

#[cfg(test)]
mod tests {
    use super::*;
    use amisim_proto::event::Payload;
    use amisim_proto::Event;
    use amisim_proto::{ImageAvailable, TagsCreated};

    fn ev(account: &str, payload: Payload) -> Event {
        Event {
            account_id: account.into(),
            payload: Some(payload),
            ..Default::default()
        }
    }

    #[test]
    fn filters() {
        let avail = ev(
            "111122223333",
            Payload::ImageAvailable(ImageAvailable {
                image_id: "ami-1".into(),
            }),
        );
        let tags = ev(
            "system",
            Payload::TagsCreated(TagsCreated {
                resource_ids: vec!["ami-1".into(), "snap-2".into()],
                ..Default::default()
            }),
        );
        assert_eq!(payload_name(&avail), "ImageAvailable");
        assert_eq!(payload_name(&Event::default()), "");
        let all = EventFilter::new(&[], "", "");
        assert!(all.is_empty() && all.matches(&avail) && all.matches(&tags));
        let by_type = EventFilter::new(&["image_available".into()], "", "");
        assert!(by_type.matches(&avail) && !by_type.matches(&tags));
        let by_id = EventFilter::new(&[], "snap-2", "");
        assert!(!by_id.matches(&avail) && by_id.matches(&tags));
        let prefix = EventFilter::new(&[], "ami-", "");
        assert!(!prefix.matches(&avail), "ids match whole, not as prefixes");
        let by_account = EventFilter::new(&["TagsCreated".into()], "ami-1", "system");
        assert!(!by_account.matches(&avail) && by_account.matches(&tags));
    }
}
