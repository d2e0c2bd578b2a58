use super::Auth;
use crate::domain::{RequestMeta, UserId};
use crate::ports::LimitKey;
use std::net::IpAddr;

/// The rate-limit key for a client address: IPv4 as is, IPv6 grouped by
/// its /64 (one customer usually owns a whole /64).
pub fn client_key(meta: &RequestMeta) -> String {
    match meta.ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok()) {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        None => "unknown".into(),
    }
}

impl Auth {
    /// Hits every key; `RateLimited` with the wait if any is exhausted.
    pub(crate) async fn limit(&self, keys: &[LimitKey]) -> Result<(), crate::Error> {
        match self.ports.limiter.hit(keys, self.now()).await? {
            None => Ok(()),
            Some(retry_after) => Err(crate::Error::RateLimited { retry_after: retry_after.max(1) }),
        }
    }

    /// Counts an admin request (API or page) of `meta`'s client against
    /// `RateLimits::admin_ip`: called before the admin key is checked, so a
    /// client past the limit is refused whether its key is right or wrong.
    pub async fn limit_admin(&self, meta: &RequestMeta) -> Result<(), crate::Error> {
        self.limit(&[self.policy.limits.admin_ip.key(format!("admin:ip:{}", client_key(meta)))]).await
    }

    /// Counts a read of `user`'s own audit trail (the activity API or the
    /// dashboard) against `RateLimits::activity`, per account and per
    /// client: each read is a query of the audit store, which a signed-in
    /// user could otherwise repeat without end. Called once the session is
    /// known to be live, so nobody else can spend an account's reads.
    pub async fn limit_activity(&self, user: &UserId, meta: &RequestMeta) -> Result<(), crate::Error> {
        let l = self.policy.limits.activity;
        self.limit(&[l.key(format!("activity:user:{user}")), l.key(format!("activity:ip:{}", client_key(meta)))]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ip: &str) -> RequestMeta {
        RequestMeta { ip: Some(ip.into()), ..Default::default() }
    }

    #[test]
    fn groups_ipv6_by_64() {
        assert_eq!(client_key(&meta("2001:db8:1:2:aaaa::1")), client_key(&meta("2001:db8:1:2:bbbb::9")));
        assert_ne!(client_key(&meta("2001:db8:1:2::1")), client_key(&meta("2001:db8:1:3::1")));
        assert_eq!(client_key(&meta("::ffff:203.0.113.7")), "203.0.113.7");
        assert_eq!(client_key(&RequestMeta::default()), "unknown");
    }
}
