use http::StatusCode;

use crate::classify::{Classification, Classify, Retryable, Source};

/// The exchange's deadline passed (or its budget arrived exhausted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("deadline exceeded{}", if self.before_sending { " before the request was sent" } else { "" })]
pub struct DeadlineExceeded {
    before_sending: bool,
    from_caller: bool,
}

impl DeadlineExceeded {
    pub(crate) fn before_sending(from_caller: bool) -> Self {
        DeadlineExceeded {
            before_sending: true,
            from_caller,
        }
    }

    pub(crate) fn while_waiting() -> Self {
        DeadlineExceeded {
            before_sending: false,
            from_caller: false,
        }
    }

    /// Whether upstream was never called.
    pub fn is_before_sending(&self) -> bool {
        self.before_sending
    }
}

impl Classify for DeadlineExceeded {
    fn classification(&self) -> Classification {
        // An exhausted budget that came from the caller is the caller's doing.
        let source = if self.from_caller {
            Source::Downstream
        } else {
            Source::Local
        };
        Classification::new(
            source,
            Retryable::No,
            StatusCode::GATEWAY_TIMEOUT,
            "deadline-exceeded",
        )
    }
}
