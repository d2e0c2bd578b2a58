//! The SES v2 `Mailer`: one `SendEmail` with Simple content (subject, text
//! and HTML) per mail, with an optional configuration set. Errors are
//! classified from the SDK's typed errors and HTTP status, never from
//! message text: throttling, 5xx, timeouts (the client's and SES's own)
//! and dispatch failures are transient; a rejected message, an unverified
//! MAIL FROM domain, a bad request, a suspended account or paused sending
//! are permanent. The client makes one HTTP request per send (see
//! `aws_calls::sesv2_client`): the delivery's own retries do the rest.

use crate::mail::delivery::{Mailer, SendError};
use crate::mail::{MailEnvelope, RenderedMail};
use async_trait::async_trait;
use aws_sdk_sesv2::Client;
use aws_sdk_sesv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sesv2::operation::send_email::SendEmailError;
use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// Sends through SES v2. Build it once per process from the shared
/// `SdkConfig` (see `aws_calls::sesv2_client`).
#[derive(Debug, Clone)]
pub struct SesMailer {
    client: Client,
    from: String,
    configuration_set: Option<String>,
}

impl SesMailer {
    /// `from` is a mailbox SES has verified (`Name <addr>` or a bare
    /// address, or one on a verified domain).
    pub fn new(client: Client, from: impl Into<String>, configuration_set: Option<String>) -> Self {
        SesMailer { client, from: from.into(), configuration_set: configuration_set.filter(|s| !s.is_empty()) }
    }
}

fn content(data: &str) -> Result<Content, SendError> {
    Content::builder()
        .data(data)
        .charset("UTF-8")
        .build()
        .map_err(|e| SendError::Permanent { reason: format!("building the message: {e}") })
}

#[async_trait]
impl Mailer for SesMailer {
    async fn send(&self, _env: &MailEnvelope, mail: &RenderedMail) -> Result<String, SendError> {
        let message = Message::builder()
            .subject(content(&mail.subject)?)
            .body(Body::builder().text(content(&mail.text)?).html(content(&mail.html)?).build())
            .build();
        let out = self
            .client
            .send_email()
            .from_email_address(&self.from)
            .destination(Destination::builder().to_addresses(&mail.to).build())
            .content(EmailContent::builder().simple(message).build())
            .set_configuration_set_name(self.configuration_set.clone())
            .send()
            .await
            .map_err(classify)?;
        Ok(out.message_id.unwrap_or_default())
    }
}

/// Error codes SES (or a proxy in front of it) uses for throttling and
/// for timeouts on its side, that the SDK does not model as a variant of
/// `SendEmailError`: some come with a 4xx status (RequestTimeout is a 400),
/// so the status alone would park a mail that a later try sends.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequests",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
    "SlowDown",
];

/// A `SendEmail` error as transient or permanent.
pub fn classify(err: SdkError<SendEmailError, HttpResponse>) -> SendError {
    let status = err.raw_response().map(|r| r.status().as_u16());
    let transient_status = status.is_some_and(|s| s == 408 || s == 429 || s >= 500);
    match err {
        SdkError::ServiceError(e) => {
            let e = e.into_err();
            let code = e.code().unwrap_or_else(|| variant_name(&e)).to_string();
            // The reason is logged and kept with a parked mail: SES's text
            // may name the recipient (a sandbox's "identities failed the
            // check ...: <address>"), which is masked as the api masks it.
            let described = |e: &SendEmailError| match e.message() {
                Some(m) => format!("{code}: {}", mask_addresses(m)),
                None => code.clone(),
            };
            match &e {
                SendEmailError::TooManyRequestsException(_) | SendEmailError::LimitExceededException(_) => {
                    SendError::Transient(described(&e))
                }
                SendEmailError::MessageRejected(_)
                | SendEmailError::MailFromDomainNotVerifiedException(_)
                | SendEmailError::BadRequestException(_)
                | SendEmailError::AccountSuspendedException(_)
                | SendEmailError::SendingPausedException(_)
                | SendEmailError::NotFoundException(_) => SendError::Permanent { reason: described(&e) },
                _ if transient_status || TRANSIENT_CODES.contains(&code.as_str()) => {
                    SendError::Transient(described(&e))
                }
                // Another 4xx the SDK does not know: sending it again will
                // not change the answer.
                _ => SendError::Permanent { reason: described(&e) },
            }
        }
        SdkError::TimeoutError(_) => SendError::Transient("SES request timed out".into()),
        SdkError::DispatchFailure(e) => SendError::Transient(format!("SES unreachable: {e:?}")),
        SdkError::ResponseError(_) => match status {
            Some(s) if transient_status => SendError::Transient(format!("SES answered HTTP {s} unreadably")),
            // An unreadable answer may still have meant success: sending
            // again risks a duplicate, but losing the mail is worse.
            _ => SendError::Transient("unreadable SES response".into()),
        },
        // The request could not be built: a bug or bad configuration.
        e => SendError::Permanent { reason: format!("SES request not sent: {e}") },
    }
}

/// `text` with the local part of every address in it cut to its first
/// character as [`Email::masked`](crate::domain::Email::masked) cuts it
/// (`bob@example.com` to `b***@example.com`, `"bob smith"@x.org` to
/// `"b***"@x.org`).
fn mask_addresses(text: &str) -> String {
    use crate::domain::mask_local_part;
    const NOT_LOCAL: &[char] = &['<', '>', '(', ')', '[', ']', ',', ';', ':', '"', '\'', '='];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        let before = &rest[..at];
        // A quoted local part runs back to its opening quote.
        let quoted = before.strip_suffix('"').and_then(|b| b.rfind('"').map(|open| (open, &b[open + 1..])));
        match quoted {
            Some((open, local)) => {
                out.push_str(&before[..open]);
                out.push('"');
                out.push_str(&mask_local_part(local));
                out.push('"');
            }
            None => {
                let start = before
                    .rfind(|c: char| c.is_whitespace() || NOT_LOCAL.contains(&c))
                    .map_or(0, |i| i + before[i..].chars().next().map_or(1, char::len_utf8));
                out.push_str(&before[..start]);
                if !before[start..].is_empty() {
                    out.push_str(&mask_local_part(&before[start..]));
                }
            }
        }
        out.push('@');
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out
}

/// The error code SES sends for each modelled error, for reasons built
/// from an error that carries no metadata.
fn variant_name(e: &SendEmailError) -> &'static str {
    match e {
        SendEmailError::AccountSuspendedException(_) => "AccountSuspendedException",
        SendEmailError::BadRequestException(_) => "BadRequestException",
        SendEmailError::LimitExceededException(_) => "LimitExceededException",
        SendEmailError::MailFromDomainNotVerifiedException(_) => "MailFromDomainNotVerifiedException",
        SendEmailError::MessageRejected(_) => "MessageRejected",
        SendEmailError::NotFoundException(_) => "NotFoundException",
        SendEmailError::SendingPausedException(_) => "SendingPausedException",
        SendEmailError::TooManyRequestsException(_) => "TooManyRequestsException",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sesv2::types::error::{MessageRejected, TooManyRequestsException};
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn service(err: SendEmailError, status: u16) -> SdkError<SendEmailError, HttpResponse> {
        SdkError::service_error(err, HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty()))
    }

    fn unhandled(code: &str) -> SendEmailError {
        SendEmailError::generic(ErrorMetadata::builder().code(code).build())
    }

    #[test]
    fn classifies_by_type_and_status() {
        let e = SendEmailError::MessageRejected(
            MessageRejected::builder()
                .message("Email address not verified")
                .meta(ErrorMetadata::builder().code("MessageRejected").message("Email address not verified").build())
                .build(),
        );
        assert_eq!(
            classify(service(e, 400)),
            SendError::Permanent { reason: "MessageRejected: Email address not verified".into() }
        );
        let e = SendEmailError::TooManyRequestsException(TooManyRequestsException::builder().build());
        assert!(matches!(classify(service(e, 429)), SendError::Transient(_)));
        assert!(matches!(classify(service(unhandled("InternalFailure"), 500)), SendError::Transient(_)));
        assert!(matches!(classify(service(unhandled("ServiceUnavailable"), 503)), SendError::Transient(_)));
        assert!(matches!(classify(service(unhandled("Whatever"), 429)), SendError::Transient(_)));
        assert!(matches!(classify(service(unhandled("Throttling"), 400)), SendError::Transient(_)));
        assert!(matches!(classify(service(unhandled("ValidationError"), 400)), SendError::Permanent { .. }));
        // A request timeout whatever its code, and the SDKs' other names for throttling.
        assert!(matches!(classify(service(unhandled("Whatever"), 408)), SendError::Transient(_)));
        for code in ["ThrottledException", "RequestThrottled", "RequestThrottledException", "BandwidthLimitExceeded"] {
            assert!(matches!(classify(service(unhandled(code), 400)), SendError::Transient(_)), "{code}");
        }
    }

    #[test]
    fn a_reason_names_no_recipient() {
        let text = "Email address is not verified. The following identities failed the check in region \
                    EU-WEST-1: bob.smith@example.com, <al@x.org>; \"zoë@b.c\" @ x@ \"bob smith\"@q.r";
        let e = SendEmailError::MessageRejected(
            MessageRejected::builder()
                .message(text)
                .meta(ErrorMetadata::builder().code("MessageRejected").message(text).build())
                .build(),
        );
        let SendError::Permanent { reason } = classify(service(e, 400)) else { panic!("a rejection is permanent") };
        assert_eq!(
            reason,
            "MessageRejected: Email address is not verified. The following identities failed the check in \
             region EU-WEST-1: b***@example.com, <a***@x.org>; \"z***@b.c\" @ x***@ \"b***\"@q.r"
        );
    }

    #[test]
    fn timeouts_and_slow_downs_on_the_ses_side_are_transient() {
        for code in ["RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "SlowDown"] {
            for status in [400, 408] {
                assert!(
                    matches!(classify(service(unhandled(code), status)), SendError::Transient(ref r) if r == code),
                    "{code} ({status})"
                );
            }
        }
    }
}
