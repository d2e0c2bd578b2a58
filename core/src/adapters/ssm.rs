//! Secrets from SSM Parameter Store (SecureString), read once at cold start.

use crate::domain::Secret;
use std::collections::HashMap;

/// Reads the named SecureString parameters, decrypted, in one call. A
/// missing name is an error naming it (start-up errors are plain text:
/// they end the process with a message).
pub async fn read_secrets(
    client: &aws_sdk_ssm::Client,
    names: &[&str],
) -> Result<HashMap<String, Secret<String>>, String> {
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let out = client
        .get_parameters()
        .set_names(Some(names.iter().map(|s| s.to_string()).collect()))
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| format!("reading SSM parameters: {}", aws_sdk_ssm::error::DisplayErrorContext(e)))?;
    if let Some(missing) = out.invalid_parameters.filter(|m| !m.is_empty()) {
        return Err(format!("SSM parameters not found: {}", missing.join(", ")));
    }
    Ok(out.parameters.unwrap_or_default().into_iter().filter_map(|p| Some((p.name?, Secret::new(p.value?)))).collect())
}

/// The audit trail's seal key on AWS: from the SSM parameter
/// `LATCHKEY_AUDIT_KEY_PARAM` names (the deployed way), else from
/// `LATCHKEY_AUDIT_KEY` itself (emulators and tests). Only the trail's
/// writer and `verify-chain` ask for it.
pub async fn audit_key(
    config: &crate::config::Config,
    sdk: &aws_config::SdkConfig,
) -> Result<crate::keys::AuditKey, String> {
    let value = match (&config.audit_key_param, &config.audit_key) {
        (Some(name), _) => read_secrets(&aws_sdk_ssm::Client::new(sdk), &[name.as_str()])
            .await?
            .remove(name)
            .ok_or_else(|| format!("LATCHKEY_AUDIT_KEY_PARAM: parameter {name} not found"))?,
        (None, Some(v)) => v.clone(),
        (None, None) => {
            return Err(
                "LATCHKEY_AUDIT_KEY_PARAM (or LATCHKEY_AUDIT_KEY): required to write or verify the audit trail \
                        on AWS"
                    .into(),
            );
        }
    };
    // The value is not echoed: it is the key.
    crate::keys::AuditKey::from_base64(value.expose()).map_err(|e| format!("LATCHKEY_AUDIT_KEY: {e}"))
}
