//! `MailLedger` on the `{prefix}-mail-ledger` table: one item per job,
//! `pk = MAIL#<job id>`, with `state`, `kind`, `to`, `attempts`, `reason`,
//! `provider_id`, `lease_until`, `claim_id` (the last claim's own mark), `created_at`, `updated_at`, `ttl` and the
//! audit `subject` (absent for mail with no account behind it). The
//! table streams NEW_AND_OLD_IMAGES, so each outcome reaches the audit
//! trail. The job's code or token is never written here.
//!
//! The claim is one conditional `UpdateItem`; on a failed condition the old
//! item comes back (`ReturnValuesOnConditionCheckFailure = ALL_OLD`) and
//! says whether the job was sent or is leased to someone else.

use super::errors::{map_sdk, old_item_on_failed_check};
use super::items::{Item, PK, TTL, n, s, text};
use crate::StoreError;
use crate::clock::Timestamp;
use crate::mail::delivery::{Claim, Holding, JobMeta, LEDGER_TTL_SECS, LedgerEntry, MailLedger, ledger_state};
use crate::ports::StoreResult;
use crate::tables;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

/// The DynamoDB mail ledger. Cheap to clone; build once per process.
#[derive(Debug, Clone)]
pub struct DynamoMailLedger {
    client: Client,
    table: String,
}

pub fn mail_pk(id: &str) -> String {
    format!("MAIL#{id}")
}

/// Every attribute goes through a name placeholder: `state`, `to` and `ttl`
/// are DynamoDB reserved words.
const NAMES: &[(&str, &str)] = &[
    ("#state", "state"),
    ("#kind", "kind"),
    ("#to", "to"),
    ("#attempts", "attempts"),
    ("#reason", "reason"),
    ("#provider", "provider_id"),
    ("#lease", "lease_until"),
    ("#created", "created_at"),
    ("#updated", "updated_at"),
    ("#ttl", TTL),
    ("#subject", "subject"),
    ("#claim", "claim_id"),
];

impl DynamoMailLedger {
    /// The ledger on `{table_prefix}-mail-ledger`.
    pub fn new(client: Client, table_prefix: &str) -> Self {
        DynamoMailLedger { client, table: tables::table_name(table_prefix, &tables::MAIL_LEDGER) }
    }

    /// An update of `id` with the placeholders `expression` and `condition`
    /// use, and `values`.
    fn update(
        &self,
        id: &str,
        expression: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        let all = format!("{expression} {condition}");
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(mail_pk(id)))
            .update_expression(expression)
            .condition_expression(condition);
        for (placeholder, name) in NAMES {
            if all.contains(placeholder) {
                req = req.expression_attribute_names(*placeholder, *name);
            }
        }
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        req
    }
}

fn is_condition_failure(
    e: &SdkError<UpdateItemError, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> bool {
    matches!(e, SdkError::ServiceError(se) if matches!(se.err(), UpdateItemError::ConditionalCheckFailedException(_)))
}

/// The `SET` clause part and value that store `job`'s audit subject, if it
/// has one (a job without one leaves any stored subject alone).
fn subject_update(job: &JobMeta) -> (&'static str, Option<(&'static str, AttributeValue)>) {
    match &job.subject {
        Some(subject) => (", #subject = :subject", Some((":subject", s(subject.clone())))),
        None => ("", None),
    }
}

fn string(item: &Item, name: &str) -> Option<String> {
    text(item, name).map(str::to_string)
}

fn int(item: &Item, name: &str) -> Option<i64> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

#[async_trait]
impl MailLedger for DynamoMailLedger {
    async fn claim(&self, job: &JobMeta, now: Timestamp, lease_secs: i64) -> StoreResult<Claim> {
        let (set_subject, subject) = subject_update(job);
        // This claim's own mark: the SDK sends a request again when its
        // answer was lost, and the retry is then refused by the lease this
        // very claim took; the mark tells that apart from another's lease.
        let mark = super::items::write_mark();
        let mut values = vec![
            (":claim", s(mark.clone())),
            (":sending", s(ledger_state::SENDING)),
            (":sent", s(ledger_state::SENT)),
            (":lease", n(now + lease_secs)),
            (":kind", s(job.kind)),
            (":to", s(job.to.clone())),
            (":now", n(now)),
            (":ttl", n(now + LEDGER_TTL_SECS)),
            (":one", n(1)),
        ];
        values.extend(subject);
        let result = self
            .update(
                &job.id,
                &format!(
                    "SET #state = :sending, #lease = :lease, #claim = :claim, #kind = :kind, #to = :to, \
                     #updated = :now, #created = if_not_exists(#created, :now), #ttl = :ttl{set_subject} \
                     ADD #attempts :one REMOVE #reason"
                ),
                "attribute_not_exists(#state) OR (#state <> :sent AND (attribute_not_exists(#lease) OR #lease <= :now))",
                values,
            )
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let err = match result {
            Ok(_) => return Ok(Claim::Claimed),
            Err(err) => err,
        };
        let old = match old_item_on_failed_check(err)? {
            Some(item) => item,
            // Without the old item, read it.
            None => self.raw(&job.id).await?.ok_or_else(|| StoreError::internal("claim refused, no record"))?,
        };
        let state = text(&old, "state");
        if state == Some(ledger_state::SENT) {
            Ok(Claim::AlreadySent)
        } else if text(&old, "claim_id") == Some(mark.as_str()) && state == Some(ledger_state::SENDING) {
            // An earlier send of this claim was applied.
            Ok(Claim::Claimed)
        } else {
            Ok(Claim::Busy { lease_until: int(&old, "lease_until").unwrap_or(now) })
        }
    }

    async fn mark_sent(&self, id: &str, provider_id: &str, now: Timestamp) -> StoreResult<()> {
        self.update(
            id,
            "SET #state = :sent, #provider = :provider, #updated = :now REMOVE #lease, #reason",
            "attribute_exists(#state)",
            vec![(":sent", s(ledger_state::SENT)), (":provider", s(provider_id)), (":now", n(now))],
        )
        .send()
        .await
        .map_err(map_sdk)?;
        Ok(())
    }

    async fn mark_failed(&self, job: &JobMeta, reason: &str, now: Timestamp, holding: Holding) -> StoreResult<()> {
        let (set_subject, subject) = subject_update(job);
        let mut values = vec![
            (":failed", s(ledger_state::FAILED)),
            (":sent", s(ledger_state::SENT)),
            (":reason", s(reason)),
            (":kind", s(job.kind)),
            (":to", s(job.to.clone())),
            (":now", n(now)),
            (":ttl", n(now + LEDGER_TTL_SECS)),
            (":zero", n(0)),
        ];
        values.extend(subject);
        let result = self
            .update(
                &job.id,
                &format!(
                    "SET #state = :failed, #reason = :reason, #kind = :kind, #to = :to, #updated = :now, \
                     #created = if_not_exists(#created, :now), #ttl = :ttl, \
                     #attempts = if_not_exists(#attempts, :zero){set_subject} REMOVE #lease"
                ),
                match holding {
                    Holding::Claim => "attribute_not_exists(#state) OR #state <> :sent",
                    Holding::Nothing => {
                        "(attribute_not_exists(#state) OR #state <> :sent) \
                         AND (attribute_not_exists(#lease) OR #lease <= :now)"
                    }
                },
                values,
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Already sent, or another delivery's to record: the record
            // stays as it is.
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(map_sdk(e)),
        }
    }

    async fn release(&self, id: &str, reason: &str, now: Timestamp) -> StoreResult<()> {
        let result = self
            .update(
                id,
                "SET #state = :retry, #reason = :reason, #updated = :now REMOVE #lease",
                "#state = :sending",
                vec![
                    (":retry", s(ledger_state::RETRY)),
                    (":sending", s(ledger_state::SENDING)),
                    (":reason", s(reason)),
                    (":now", n(now)),
                ],
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(map_sdk(e)),
        }
    }

    async fn entry(&self, id: &str) -> StoreResult<Option<LedgerEntry>> {
        Ok(self.raw(id).await?.map(|item| LedgerEntry {
            id: id.to_string(),
            kind: string(&item, "kind").unwrap_or_default(),
            to: string(&item, "to").unwrap_or_default(),
            state: string(&item, "state").unwrap_or_default(),
            attempts: int(&item, "attempts").unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
            reason: string(&item, "reason"),
            provider_id: string(&item, "provider_id"),
            lease_until: int(&item, "lease_until"),
            updated_at: int(&item, "updated_at").unwrap_or(0),
            subject: string(&item, "subject"),
        }))
    }
}

impl DynamoMailLedger {
    async fn raw(&self, id: &str) -> StoreResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(mail_pk(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(map_sdk)?;
        Ok(out.item)
    }
}
