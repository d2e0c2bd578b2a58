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
