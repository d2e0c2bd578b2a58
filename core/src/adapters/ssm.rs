//! Secrets from SSM Parameter Store (SecureString), read once at cold start.

use crate::domain::Secret;
use std::collections::HashMap;

/// Reads SecureString parameters, decrypted, in one call. Each is given as
/// (the variable that names it, its name). A missing parameter is an error
/// naming it and its variable (start-up errors are plain text: they end the
/// process with a message).
pub async fn read_secrets(
    client: &aws_sdk_ssm::Client,
    params: &[(&str, &str)],
) -> Result<HashMap<String, Secret<String>>, String> {
    if params.is_empty() {
        return Ok(HashMap::new());
    }
    let mut names: Vec<String> = params.iter().map(|(_, name)| name.to_string()).collect();
    names.sort();
    names.dedup();
    let out = client
        .get_parameters()
        .set_names(Some(names))
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| format!("reading SSM parameters: {}", aws_sdk_ssm::error::DisplayErrorContext(e)))?;
    if let Some(missing) = out.invalid_parameters.filter(|m| !m.is_empty()) {
        return Err(format!("SSM parameters not found: {}", named_by(params, &missing)));
    }
    Ok(out.parameters.unwrap_or_default().into_iter().filter_map(|p| Some((p.name?, Secret::new(p.value?)))).collect())
}

/// `missing` parameter names, each with the variables that named it:
/// "/p/jwt-private-key-b (LATCHKEY_JWT_STANDBY_KEY_PARAM)".
fn named_by(params: &[(&str, &str)], missing: &[String]) -> String {
    missing
        .iter()
        .map(|name| {
            let vars: Vec<&str> = params.iter().filter(|(_, n)| n == name).map(|(var, _)| *var).collect();
            if vars.is_empty() { name.clone() } else { format!("{name} ({})", vars.join(", ")) }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A secret as the functions take it: from the SSM parameter `param` names
/// (the deployed way; its value already read into `from_ssm` by
/// [`read_secrets`]), else from the variable `var` itself (emulators and
/// tests). Errors name the variable, never a value.
pub fn pick_secret(
    from_ssm: &HashMap<String, Secret<String>>,
    param: &Option<String>,
    direct: &Option<Secret<String>>,
    var: &str,
) -> Result<Secret<String>, String> {
    match (param, direct) {
        (Some(name), _) => {
            from_ssm.get(name).cloned().ok_or_else(|| format!("{var}_PARAM: parameter {name} not found"))
        }
        (None, Some(v)) => Ok(v.clone()),
        (None, None) => {
            Err(format!("{var}_PARAM (or {var}): required on AWS (LATCHKEY_BACKEND=aws, and the stream processor)"))
        }
    }
}

/// The audit trail's seal key on AWS ([`pick_secret`] of
/// `LATCHKEY_AUDIT_KEY`). Only the trail's writer and `verify-chain` ask
/// for it.
pub async fn audit_key(
    config: &crate::config::Config,
    sdk: &aws_config::SdkConfig,
) -> Result<crate::keys::AuditKey, String> {
    let params: Vec<(&str, &str)> =
        config.audit_key_param.iter().map(|name| ("LATCHKEY_AUDIT_KEY_PARAM", name.as_str())).collect();
    let from_ssm = read_secrets(&aws_sdk_ssm::Client::new(sdk), &params).await?;
    let value = pick_secret(&from_ssm, &config.audit_key_param, &config.audit_key, "LATCHKEY_AUDIT_KEY")?;
    // The value is not echoed: it is the key.
    crate::keys::AuditKey::from_base64(value.expose()).map_err(|e| format!("LATCHKEY_AUDIT_KEY: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_parameter_is_named_with_the_variables_that_named_it() {
        let params = [
            ("LATCHKEY_JWT_PRIVATE_KEY_PARAM", "/p/jwt-private-key"),
            ("LATCHKEY_JWT_STANDBY_KEY_PARAM", "/p/jwt-private-key-b"),
            ("LATCHKEY_CODE_HMAC_KEY_PARAM", "/p/jwt-private-key-b"),
        ];
        assert_eq!(
            named_by(&params, &["/p/jwt-private-key-b".into(), "/p/other".into()]),
            "/p/jwt-private-key-b (LATCHKEY_JWT_STANDBY_KEY_PARAM, LATCHKEY_CODE_HMAC_KEY_PARAM); /p/other"
        );
    }
}
