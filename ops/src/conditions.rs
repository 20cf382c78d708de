//! Conditions and Events as both binaries write them. The condition helpers are pure and
//! live in `ferrolb_crds::condition` (the controller's core uses them without a client).

pub use ferrolb_crds::condition::{condition, replace};

/// Longest Event `note` the API server accepts (events.k8s.io/v1: 1 KB); a longer one is
/// refused with 422 and the Event is lost.
pub const MAX_EVENT_NOTE: usize = 1024;

/// `note` cut to fit an Event, on a character boundary, ending in `…` when cut. Notes that
/// list many Services or pools can grow past the limit; the full text stays in the
/// condition message and the log.
pub fn event_note(note: &str) -> String {
    if note.len() <= MAX_EVENT_NOTE {
        return note.to_owned();
    }
    let ellipsis = "…";
    let mut end = MAX_EVENT_NOTE - ellipsis.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &note[..end])
}

#[cfg(test)]
mod note_tests {
    use super::*;

    #[test]
    fn notes_fit_an_event() {
        assert_eq!(event_note("short"), "short");
        let exact = "x".repeat(MAX_EVENT_NOTE);
        assert_eq!(event_note(&exact), exact);
        for long in [
            "y".repeat(5000),
            "é".repeat(900),
            format!("a{}", "€".repeat(400)),
        ] {
            let n = event_note(&long);
            assert!(n.len() <= MAX_EVENT_NOTE, "{} bytes", n.len());
            assert!(n.ends_with('…'));
            assert!(long.starts_with(n.trim_end_matches('…')));
        }
    }
}
