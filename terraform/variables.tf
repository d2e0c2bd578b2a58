# ---------------------------------------------------------------- naming, region

variable "name_prefix" {
  description = "Prefix of every resource name. Also LATCHKEY_TABLE_PREFIX: tables are `{prefix}-users` etc., queues `{prefix}-mail`, `{prefix}-mail-dlq`."
  type        = string
  default     = "latchkey"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix: 3-24 characters, lowercase letters, digits and '-', starting with a letter (it ends up in Lambda, IAM and SQS names)."
  }
}

variable "region" {
  description = "AWS region to deploy into. SES must be available there (it is in most commercial regions)."
  type        = string
  default     = "eu-west-1"
  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region: an AWS region code such as eu-west-1."
  }
}

variable "tags" {
  description = "Extra tags put on every resource (on top of Project/ManagedBy/Stack)."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------- public URL, domain

variable "public_base_url" {
  description = "Public URL of the API, used in mail links (PUBLIC_BASE_URL). Default: https://<custom_domain_name>, else the API Gateway endpoint."
  type        = string
  default     = null
  validation {
    condition     = var.public_base_url == null || can(regex("^https://[^/?#\\s]+$", var.public_base_url))
    error_message = "public_base_url: https:// and the host only (the pages are at the site's root: no path, no trailing '/')."
  }
}

variable "custom_domain_name" {
  description = "Optional custom domain for the HTTP API (e.g. auth.example.com). Needs custom_domain_certificate_arn."
  type        = string
  default     = null
  validation {
    condition     = var.custom_domain_name == null || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,}$", var.custom_domain_name))
    error_message = "custom_domain_name: a lowercase DNS name such as auth.example.com."
  }
}

variable "custom_domain_certificate_arn" {
  description = "ACM certificate ARN (same region) covering custom_domain_name. Required when custom_domain_name is set."
  type        = string
  default     = null
  validation {
    condition     = var.custom_domain_name == null || (var.custom_domain_certificate_arn != null && can(regex("^arn:aws[a-z-]*:acm:", coalesce(var.custom_domain_certificate_arn, "-"))))
    error_message = "custom_domain_certificate_arn: an ACM certificate ARN is required when custom_domain_name is set."
  }
}

variable "route53_zone_id" {
  description = "Optional Route 53 hosted zone ID. When set, the custom domain alias and the SES DKIM CNAMEs are created in it; otherwise create them yourself from the outputs."
  type        = string
  default     = null
}

# ---------------------------------------------------------------- mail (SES)

variable "ses_from_address" {
  description = "Sender address of every mail (LATCHKEY_SES_FROM). Verified as an SES email identity unless ses_domain is set."
  type        = string
  validation {
    condition     = can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.ses_from_address))
    error_message = "ses_from_address: an email address such as no-reply@example.com."
  }
}

variable "ses_domain" {
  description = "Optional sending domain verified with Easy DKIM (RSA 2048). ses_from_address must be in it. Without it only the single address is verified."
  type        = string
  default     = null
  validation {
    condition     = var.ses_domain == null || endswith(lower(var.ses_from_address), "@${lower(coalesce(var.ses_domain, "-"))}")
    error_message = "ses_domain: ses_from_address must be an address in ses_domain."
  }
}

variable "ses_max_send_rate" {
  description = "Mails per second all workers together send at most: the account's SES quota (sandbox: 1). Each of the worker_max_concurrency instances gets an equal share as its LATCHKEY_SES_MAX_SEND_RATE."
  type        = number
  default     = 1
  validation {
    condition     = var.ses_max_send_rate > 0 && var.ses_max_send_rate <= 1000
    error_message = "ses_max_send_rate: between 0 (exclusive) and 1000."
  }
}

# ---------------------------------------------------------------- Lambda sizing

variable "lambda_zip_dir" {
  description = "Directory holding <binary>/bootstrap.zip from scripts/package-lambdas. Default: ../target/lambda relative to this module."
  type        = string
  default     = null
}

variable "api_memory_mb" {
  description = "Memory of the api function. Lambda CPU scales with memory and argon2id is CPU-bound: 1769 MB is one full vCPU."
  type        = number
  default     = 1769
  validation {
    condition     = var.api_memory_mb >= 1024 && var.api_memory_mb <= 10240 && floor(var.api_memory_mb) == var.api_memory_mb
    error_message = "api_memory_mb: 1024..10240 (below 1024 MB a login's argon2id hash gets slow). A whole number."
  }
  validation {
    # Each of the api's api_hash_threads hashing threads holds argon2_m_kib
    # KiB of its own while it hashes (core/src/password_hasher.rs, `Memory`;
    # argon2_p splits that memory into lanes, it adds none), and Terraform
    # always sets LATCHKEY_HASH_THREADS, so the code's one-per-core default
    # never applies. 256 MiB is left for the rest of the process. Without
    # it the function is planned with less memory than its hashing needs
    # and every login ends out of memory.
    condition     = var.api_hash_threads * var.argon2_m_kib / 1024 + 256 <= var.api_memory_mb
    error_message = "api_memory_mb: ${var.api_memory_mb} MB is less than the api's hashing needs: ${var.api_hash_threads} thread(s) (api_hash_threads) x ${var.argon2_m_kib} KiB (argon2_m_kib) = ${ceil(var.api_hash_threads * var.argon2_m_kib / 1024)} MiB, plus 256 MiB for the rest of the process. Raise api_memory_mb, or lower argon2_m_kib or api_hash_threads."
  }
}

variable "api_timeout_seconds" {
  description = "Timeout of the api function. API Gateway HTTP APIs give up after 30 s."
  type        = number
  default     = 10
  validation {
    condition     = var.api_timeout_seconds >= 3 && var.api_timeout_seconds <= 29 && floor(var.api_timeout_seconds) == var.api_timeout_seconds
    error_message = "api_timeout_seconds: 3..29. A whole number."
  }
}

variable "api_hash_threads" {
  description = "LATCHKEY_HASH_THREADS for the api. One Lambda instance serves one request at a time, so 1 is enough."
  type        = number
  default     = 1
  validation {
    condition     = var.api_hash_threads >= 1 && var.api_hash_threads <= 16 && floor(var.api_hash_threads) == var.api_hash_threads
    error_message = "api_hash_threads: 1..16. A whole number."
  }
}

variable "api_reserved_concurrency" {
  description = "Reserved concurrency of the api: a cap on parallel instances (and on what a flood can cost). -1 = unreserved; new accounts with a concurrency quota of 10 cannot reserve anything."
  type        = number
  default     = 100
  validation {
    condition     = (var.api_reserved_concurrency == -1 || var.api_reserved_concurrency >= 1) && floor(var.api_reserved_concurrency) == var.api_reserved_concurrency
    error_message = "api_reserved_concurrency: -1 (unreserved) or at least 1. A whole number."
  }
}

variable "worker_memory_mb" {
  description = "Memory of the mail-worker function."
  type        = number
  default     = 256
  validation {
    condition     = var.worker_memory_mb >= 128 && var.worker_memory_mb <= 10240 && floor(var.worker_memory_mb) == var.worker_memory_mb
    error_message = "worker_memory_mb: 128..10240. A whole number."
  }
}

variable "worker_timeout_seconds" {
  description = "Timeout of the mail-worker. The mail queue's visibility timeout is derived from it (6 x timeout + batching window)."
  type        = number
  default     = 30
  validation {
    # A delivery must end within the mail ledger's claim lease (300 s,
    # latchkey_core::mail::delivery::LEASE_SECS), or a duplicate SQS
    # delivery could claim the job again while it is still being sent.
    # And the queue's redeliveries must outlast that lease: a worker that
    # died mid-send leaves its claim, each redelivery within the lease is
    # answered "busy", and after maxReceiveCount (5) receives SQS parks the
    # job. The claim is taken up to a batching window w plus a timeout t
    # after the first receive, and the fifth receive comes 4 visibilities
    # (6t + w each) after it: 4(6t + w) >= w + t + 300, i.e. 23t + 3w >= 300,
    # which t >= 14 meets for every window (14 x 23 = 322).
    condition     = var.worker_timeout_seconds >= 14 && var.worker_timeout_seconds <= 280 && floor(var.worker_timeout_seconds) == var.worker_timeout_seconds
    error_message = "worker_timeout_seconds: 14..280 (a delivery must end within the mail ledger's 300 s claim lease, and the queue's 5 receives must outlast it). A whole number."
  }
}

variable "worker_batch_size" {
  description = "Mail jobs per worker invocation. At most what one instance can send in its timeout: ses_max_send_rate / worker_max_concurrency per second, for worker_timeout_seconds less 7 s."
  type        = number
  default     = 10
  validation {
    condition     = var.worker_batch_size >= 1 && var.worker_batch_size <= 100 && floor(var.worker_batch_size) == var.worker_batch_size
    error_message = "worker_batch_size: 1..100. A whole number."
  }
  validation {
    # An instance sends at most local.worker_instance_send_rate mails a
    # second and starts no send in the last local.worker_send_margin_seconds
    # of its timeout. The records of a larger batch that find no send slot
    # in time are left for redelivery without an attempt, again on every
    # receive, and end in the DLQ as "transient failures exhausted".
    condition     = var.worker_batch_size <= local.worker_instance_send_rate * (var.worker_timeout_seconds - local.worker_send_margin_seconds)
    error_message = "worker_batch_size: a batch of ${var.worker_batch_size} cannot all be sent before the worker's timeout: each instance sends ${local.worker_instance_send_rate} mails/s (ses_max_send_rate ${var.ses_max_send_rate} / worker_max_concurrency ${var.worker_max_concurrency}) and starts sends for ${var.worker_timeout_seconds - local.worker_send_margin_seconds} s of its ${var.worker_timeout_seconds} s (worker_timeout_seconds less ${local.worker_send_margin_seconds} s), so at most ${floor(local.worker_instance_send_rate * (var.worker_timeout_seconds - local.worker_send_margin_seconds))} fit. Lower worker_batch_size or worker_max_concurrency, or raise ses_max_send_rate or worker_timeout_seconds."
  }
}

variable "worker_batch_window_seconds" {
  description = "How long SQS gathers mail jobs before invoking the worker (MaximumBatchingWindowInSeconds)."
  type        = number
  default     = 1
  validation {
    condition     = var.worker_batch_window_seconds >= 0 && var.worker_batch_window_seconds <= 20 && floor(var.worker_batch_window_seconds) == var.worker_batch_window_seconds
    error_message = "worker_batch_window_seconds: 0..20 (mails carry codes with a 5-minute life). A whole number."
  }
  validation {
    # AWS refuses a standard queue's mapping with more than 10 records a
    # batch and no batching window (InvalidParameterValueException).
    condition     = var.worker_batch_size <= 10 || var.worker_batch_window_seconds >= 1
    error_message = "worker_batch_window_seconds: a worker_batch_size over 10 (${var.worker_batch_size}) needs a batching window of at least 1 s."
  }
}

variable "worker_max_concurrency" {
  description = "Most worker instances the SQS mapping runs at once; with ses_max_send_rate it bounds the SES send rate."
  type        = number
  default     = 2
  validation {
    condition     = var.worker_max_concurrency >= 2 && var.worker_max_concurrency <= 1000 && floor(var.worker_max_concurrency) == var.worker_max_concurrency
    error_message = "worker_max_concurrency: 2..1000 (AWS minimum is 2). A whole number."
  }
}

variable "worker_reserve_concurrency" {
  description = "Reserve worker_max_concurrency instances for the mail worker, so api traffic cannot starve the mail of codes. false on an account whose concurrency quota is still 10 (it cannot reserve any); the SQS mapping's maximum_concurrency caps the worker either way."
  type        = bool
  default     = true
}

variable "processor_memory_mb" {
  description = "Memory of the stream-processor function."
  type        = number
  default     = 256
  validation {
    condition     = var.processor_memory_mb >= 128 && var.processor_memory_mb <= 10240 && floor(var.processor_memory_mb) == var.processor_memory_mb
    error_message = "processor_memory_mb: 128..10240. A whole number."
  }
}

variable "processor_timeout_seconds" {
  description = "Timeout of the stream-processor."
  type        = number
  default     = 60
  validation {
    condition     = var.processor_timeout_seconds >= 5 && var.processor_timeout_seconds <= 900 && floor(var.processor_timeout_seconds) == var.processor_timeout_seconds
    error_message = "processor_timeout_seconds: 5..900. A whole number."
  }
}

variable "stream_batch_size" {
  description = "Stream records per stream-processor invocation."
  type        = number
  default     = 100
  validation {
    condition     = var.stream_batch_size >= 1 && var.stream_batch_size <= 10000 && floor(var.stream_batch_size) == var.stream_batch_size
    error_message = "stream_batch_size: 1..10000. A whole number."
  }
}

variable "stream_max_retry_attempts" {
  description = "Retries of a failing stream batch before it goes to the on-failure queue. Finite, so one poison record cannot stall a shard for 24 h."
  type        = number
  default     = 5
  validation {
    condition     = var.stream_max_retry_attempts >= 0 && var.stream_max_retry_attempts <= 10000 && floor(var.stream_max_retry_attempts) == var.stream_max_retry_attempts
    error_message = "stream_max_retry_attempts: 0..10000 (-1, infinite, is not allowed). A whole number."
  }
}

variable "stream_max_record_age_seconds" {
  description = "Stream records older than this are sent to the on-failure queue instead of being processed. Default: the stream's own 24 h retention, so a throttled or slow processor delays the audit trail without dropping it."
  type        = number
  default     = 86400
  validation {
    condition     = var.stream_max_record_age_seconds >= 60 && var.stream_max_record_age_seconds <= 604800 && floor(var.stream_max_record_age_seconds) == var.stream_max_record_age_seconds
    error_message = "stream_max_record_age_seconds: 60..604800 (-1, infinite, is not allowed). A whole number."
  }
}

variable "audit_retention_days" {
  description = "How long audit records are kept (LATCHKEY_AUDIT_RETENTION_DAYS)."
  type        = number
  default     = 400
  validation {
    condition     = var.audit_retention_days >= 1 && var.audit_retention_days <= 3650 && floor(var.audit_retention_days) == var.audit_retention_days
    error_message = "audit_retention_days: 1..3650. A whole number."
  }
}

variable "log_retention_days" {
  description = "Retention of the Lambda and API access log groups, in days (one of CloudWatch's allowed values). The stream-processor's group keeps at least audit_retention_days (rounded up to an allowed value): its `audit head` lines witness the audit chains' ends."
  type        = number
  default     = 365
  validation {
    condition     = contains(local.log_retention_allowed_days, var.log_retention_days)
    error_message = "log_retention_days: one of 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

variable "tls_roots" {
  description = "LATCHKEY_TLS_ROOTS of all three functions: the CAs their AWS clients trust. `amazon`: only the Amazon Trust Services roots built into the binaries (no CA store read at cold start). `system`: the runtime's CA store, and HTTPS_PROXY (the escape hatch, should an AWS endpoint ever chain to another CA)."
  type        = string
  default     = "amazon"
  validation {
    condition     = contains(["amazon", "system"], var.tls_roots)
    error_message = "tls_roots: amazon or system."
  }
}

# ---------------------------------------------------------------- API Gateway throttling

variable "api_throttle_rate_limit" {
  description = "Steady-state requests per second the HTTP API stage accepts (all routes)."
  type        = number
  default     = 50
  validation {
    condition     = var.api_throttle_rate_limit > 0 && var.api_throttle_rate_limit <= 10000
    error_message = "api_throttle_rate_limit: 1..10000."
  }
}

variable "api_throttle_burst_limit" {
  description = "Burst of requests the HTTP API stage accepts (all routes)."
  type        = number
  default     = 100
  validation {
    condition     = var.api_throttle_burst_limit >= 1 && var.api_throttle_burst_limit <= 5000 && floor(var.api_throttle_burst_limit) == var.api_throttle_burst_limit
    error_message = "api_throttle_burst_limit: 1..5000. A whole number."
  }
}

variable "api_auth_throttle_rate_limit" {
  description = "Requests per second on each credential or mail-sending route (register, login, codes). The per-IP/per-account limits in the app still apply; this caps the cost of a flood. Shared by every client: one client above it gets everyone API Gateway's 429 on that route (docs/security.md, Known limits), so set it above the legitimate peak."
  type        = number
  default     = 10
  validation {
    condition     = var.api_auth_throttle_rate_limit > 0 && var.api_auth_throttle_rate_limit <= 10000
    error_message = "api_auth_throttle_rate_limit: 1..10000."
  }
}

variable "api_auth_throttle_burst_limit" {
  description = "Burst on each credential or mail-sending route."
  type        = number
  default     = 20
  validation {
    condition     = var.api_auth_throttle_burst_limit >= 1 && var.api_auth_throttle_burst_limit <= 5000 && floor(var.api_auth_throttle_burst_limit) == var.api_auth_throttle_burst_limit
    error_message = "api_auth_throttle_burst_limit: 1..5000. A whole number."
  }
}

# ---------------------------------------------------------------- app policy (api env)

variable "rate_limits" {
  description = "LATCHKEY_RATE_LIMITS: the app's per-IP/per-identifier limits. `relaxed` is for load tests only."
  type        = string
  default     = "default"
  validation {
    condition     = contains(["default", "relaxed"], var.rate_limits)
    error_message = "rate_limits: default or relaxed."
  }
}

variable "argon2_m_kib" {
  description = "LATCHKEY_ARGON2_M_KIB (argon2id memory, KiB). OWASP minimum 19456."
  type        = number
  default     = 19456
  validation {
    condition     = var.argon2_m_kib >= 19456 && var.argon2_m_kib <= 1048576 && floor(var.argon2_m_kib) == var.argon2_m_kib
    error_message = "argon2_m_kib: 19456..1048576 (KiB; each hashing thread holds this much). A whole number."
  }
}

variable "argon2_t" {
  description = "LATCHKEY_ARGON2_T (argon2id iterations)."
  type        = number
  default     = 2
  validation {
    condition     = var.argon2_t >= 2 && var.argon2_t <= 10 && floor(var.argon2_t) == var.argon2_t
    error_message = "argon2_t: 2..10. A whole number."
  }
}

variable "argon2_p" {
  description = "LATCHKEY_ARGON2_P (argon2id parallelism)."
  type        = number
  default     = 1
  validation {
    condition     = var.argon2_p >= 1 && var.argon2_p <= 16 && floor(var.argon2_p) == var.argon2_p
    error_message = "argon2_p: 1..16. A whole number."
  }
}

variable "password_min_chars" {
  description = "LATCHKEY_PASSWORD_MIN_CHARS."
  type        = number
  default     = 12
  validation {
    condition     = var.password_min_chars >= 8 && var.password_min_chars <= 64 && floor(var.password_min_chars) == var.password_min_chars
    error_message = "password_min_chars: 8..64. A whole number."
  }
}

variable "access_ttl_secs" {
  description = "LATCHKEY_ACCESS_TTL_SECS: access-token lifetime."
  type        = number
  default     = 600
  validation {
    condition     = var.access_ttl_secs >= 60 && var.access_ttl_secs <= 600 && floor(var.access_ttl_secs) == var.access_ttl_secs
    error_message = "access_ttl_secs: 60..600. A whole number."
  }
}

variable "otp_ttl_secs" {
  description = "LATCHKEY_OTP_TTL_SECS: standalone one-time-code lifetime (ASVS 6.5.5: at most 10 minutes)."
  type        = number
  default     = 600
  validation {
    condition     = var.otp_ttl_secs >= 60 && var.otp_ttl_secs <= 600 && floor(var.otp_ttl_secs) == var.otp_ttl_secs
    error_message = "otp_ttl_secs: 60..600. A whole number."
  }
}

variable "refresh_retry_grace_secs" {
  description = "LATCHKEY_REFRESH_RETRY_GRACE_SECS: how long after a rotation the refresh token it replaced, sent again by the same client (address and user agent), gets the new one back instead of revoking the session (a retry after a lost answer). 0, the default, turns it off: every reuse revokes."
  type        = number
  default     = 0
  validation {
    condition     = var.refresh_retry_grace_secs >= 0 && var.refresh_retry_grace_secs <= 60 && floor(var.refresh_retry_grace_secs) == var.refresh_retry_grace_secs
    error_message = "refresh_retry_grace_secs: a whole number of seconds, 0..60."
  }
}

variable "jwt_issuer" {
  description = "LATCHKEY_JWT_ISSUER. Default: the public base URL."
  type        = string
  default     = null
}

variable "jwt_audience" {
  description = "LATCHKEY_JWT_AUDIENCE."
  type        = string
  default     = "latchkey"
  validation {
    condition     = length(trimspace(var.jwt_audience)) > 0
    error_message = "jwt_audience: must not be empty."
  }
}

# ---------------------------------------------------------------- secrets

variable "jwt_private_key" {
  description = "Optional base64 PKCS#8 Ed25519 signing key. Ephemeral: it goes to SSM write-only and is never stored in plan or state. Default: one is generated."
  type        = string
  default     = null
  sensitive   = true
  ephemeral   = true
}

variable "jwt_private_key_b" {
  description = "As jwt_private_key, for the second JWT key slot (b). Ephemeral like jwt_private_key. Default: one is generated."
  type        = string
  default     = null
  sensitive   = true
  ephemeral   = true
}

variable "code_hmac_key" {
  description = "Optional base64 key (>= 32 bytes) for the one-time-code HMAC. Ephemeral like jwt_private_key. Default: one is generated."
  type        = string
  default     = null
  sensitive   = true
  ephemeral   = true
}

variable "secrets_version" {
  description = "Bump to (re)write the SSM secrets, the code HMAC key and the JWT key: generated ones are regenerated, given ones re-sent. A new code HMAC key ends every session (refresh tokens and browser sign-ins) and every unused one-time code; to rotate the JWT key alone raise jwt_key_version."
  type        = number
  default     = 1
  validation {
    condition     = var.secrets_version >= 1 && floor(var.secrets_version) == var.secrets_version
    error_message = "secrets_version: a whole number >= 1."
  }
}

variable "jwt_key_version" {
  description = "Raise to write a new JWT key into slot a (generated, or jwt_private_key sent) while sessions and codes live on. Written when secrets_version + jwt_key_version changes, so raising either writes it; keep it in terraform.tfvars. Raise it while slot b signs, at least the access lifetime (10 minutes) after the switch: the key it replaces (the one that signed before the switch) is then refused, and the new one published as the next. Raised while slot a signs, it replaces the signing key at once (after a leak)."
  type        = number
  default     = 1
  validation {
    condition     = var.jwt_key_version >= 1 && floor(var.jwt_key_version) == var.jwt_key_version
    error_message = "jwt_key_version: a whole number >= 1."
  }
}

variable "jwt_key_b_version" {
  description = "As jwt_key_version, for slot b (generated, or jwt_private_key_b sent; written when secrets_version + jwt_key_b_version changes)."
  type        = number
  default     = 1
  validation {
    condition     = var.jwt_key_b_version >= 1 && floor(var.jwt_key_b_version) == var.jwt_key_b_version
    error_message = "jwt_key_b_version: a whole number >= 1."
  }
}

variable "jwt_signing_slot" {
  description = "The JWT key slot the api signs with, a or b; the other is its standby, published and accepted. Switching writes no key: every instance starts again on the other slot, and instances still on the old configuration accept its tokens, since it was their standby. Switch to a slot written at least the JWKS cache time (5 minutes) before, so relying parties know its key; not in the apply that upgrades a stack made before the slots (its instances have no standby yet)."
  type        = string
  default     = "a"
  nullable    = false
  validation {
    condition     = contains(["a", "b"], var.jwt_signing_slot)
    error_message = "jwt_signing_slot: a or b."
  }
}

variable "jwt_previous_public_key" {
  description = "The `x` of a replaced JWT key's JWK (`/.well-known/jwks.json`, read before the rotation): the api still accepts its access tokens and publishes it. Public, not a secret. A rotation by jwt_signing_slot needs none (the standby slot is the overlap); this is for a key that is in neither slot, such as one given in jwt_private_key and written over. Take it out (\"\") once the access lifetime and the JWKS cache time have passed (15 minutes with the defaults), and leave it out after a leak: the leaked key would go on signing tokens the api accepts."
  type        = string
  default     = ""
  nullable    = false
  validation {
    # 43 base64url characters whose last one leaves the 2 bits past the
    # key's 256 at zero, as the api's strict decoding wants.
    condition     = var.jwt_previous_public_key == "" || can(regex("^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$", var.jwt_previous_public_key))
    error_message = "jwt_previous_public_key: the x of an Ed25519 JWK (43 base64url characters), or \"\"."
  }
  validation {
    condition     = !contains(local.jwt_small_order_keys, var.jwt_previous_public_key)
    error_message = "jwt_previous_public_key: a point of small order, which would verify forged signatures: no key of ours."
  }
}

variable "admin_key_hash" {
  description = "Optional hex SHA-256 of the admin bearer key (`printf %s \"$KEY\" | sha256sum`; use a key of >= 32 random bytes). Ephemeral: written write-only to the SSM SecureString /{prefix}/admin-key-hash when admin_key_hash_version changes, never stored in plan or state. Not given: the parameter holds `off` and the admin API answers 401 to everyone."
  type        = string
  default     = null
  sensitive   = true
  ephemeral   = true
  validation {
    condition     = var.admin_key_hash == null || can(regex("^[0-9a-f]{64}$", coalesce(var.admin_key_hash, "-")))
    error_message = "admin_key_hash: 64 lowercase hex digits."
  }
}

variable "admin_key_hash_version" {
  description = "Raise to (re)write the admin key hash parameter: with admin_key_hash set to turn the admin API on or change its key, without it to turn the admin API off. Keep it in terraform.tfvars: any change rewrites the parameter. Separate from secrets_version, so a new admin key does not rotate the JWT key."
  type        = number
  default     = 1
  validation {
    condition     = var.admin_key_hash_version >= 1 && floor(var.admin_key_hash_version) == var.admin_key_hash_version
    error_message = "admin_key_hash_version: a whole number >= 1."
  }
}

variable "audit_seal_key" {
  description = "Optional base64 key (>= 32 bytes) sealing the audit trail (an HMAC over each record's hash), for the stream processor alone. Ephemeral like code_hmac_key. Default: one is generated."
  type        = string
  default     = null
  sensitive   = true
  ephemeral   = true
}

variable "audit_seal_key_version" {
  description = "Raise to rotate the audit seal key: writes a new key to its parameter and restarts the stream processor on it. The records sealed before verify only with the retired key (verify-chain --retired-key), so save it first (docs/operations.md); separate from secrets_version."
  type        = number
  default     = 1
  validation {
    condition     = var.audit_seal_key_version >= 1 && floor(var.audit_seal_key_version) == var.audit_seal_key_version
    error_message = "audit_seal_key_version: a whole number >= 1."
  }
}

# ---------------------------------------------------------------- safety, alarms

variable "deletion_protection" {
  description = "DynamoDB deletion protection. Set false (and apply) before `terraform destroy`."
  type        = bool
  default     = true
}

variable "alarm_email" {
  description = "Optional address subscribed to the alarm topic (confirm the mail AWS sends)."
  type        = string
  default     = null
  validation {
    condition     = var.alarm_email == null || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", coalesce(var.alarm_email, "-")))
    error_message = "alarm_email: an email address."
  }
}

variable "iterator_age_alarm_ms" {
  description = "Alarm when the stream-processor falls this far behind (IteratorAge, milliseconds)."
  type        = number
  default     = 300000
  validation {
    condition     = var.iterator_age_alarm_ms >= 1000
    error_message = "iterator_age_alarm_ms: at least 1000."
  }
}

variable "api_5xx_alarm_threshold" {
  description = "Alarm when the API returns more than this many 5xx responses in 5 minutes."
  type        = number
  default     = 5
  validation {
    condition     = var.api_5xx_alarm_threshold >= 0
    error_message = "api_5xx_alarm_threshold: 0 or more."
  }
}

variable "processor_reserved_concurrency" {
  description = "Reserved concurrency of the stream-processor (-1 = unreserved: new accounts with a concurrency quota of 10 cannot reserve anything). Streams run one instance per shard of each of the three streams; a lower cap delays the audit trail (the iterator-age alarm tells), and records that wait longer than stream_max_record_age_seconds go to the on-failure queue."
  type        = number
  default     = 10
  validation {
    condition     = (var.processor_reserved_concurrency == -1 || var.processor_reserved_concurrency >= 1) && floor(var.processor_reserved_concurrency) == var.processor_reserved_concurrency
    error_message = "processor_reserved_concurrency: -1 (unreserved) or at least 1. A whole number."
  }
}
