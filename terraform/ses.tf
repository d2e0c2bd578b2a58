# SES v2: the sending identity (one address, or a whole domain with Easy
# DKIM) and a configuration set that requires TLS to the receiving server and
# suppresses bounced and complaining addresses.
#
# A new account is in the SES sandbox: it can send only to verified
# addresses, 200 mails a day, 1 per second. Ask AWS for production access
# before real users sign up (README.md).

resource "aws_sesv2_configuration_set" "main" {
  configuration_set_name = "${var.name_prefix}-mail"

  delivery_options {
    tls_policy = "REQUIRE"
  }
  reputation_options {
    reputation_metrics_enabled = true
  }
  sending_options {
    sending_enabled = true
  }
  suppression_options {
    suppressed_reasons = ["BOUNCE", "COMPLAINT"]
  }
}

# Without a domain: verify just the sender address (AWS mails it a link).
resource "aws_sesv2_email_identity" "sender" {
  count                  = var.ses_domain == null ? 1 : 0
  email_identity         = var.ses_from_address
  configuration_set_name = aws_sesv2_configuration_set.main.configuration_set_name
}

# With a domain: Easy DKIM with 2048-bit keys; publish the three CNAMEs
# (below when route53_zone_id is set, else from the `ses_dkim_records` output).
resource "aws_sesv2_email_identity" "domain" {
  count                  = var.ses_domain == null ? 0 : 1
  email_identity         = var.ses_domain
  configuration_set_name = aws_sesv2_configuration_set.main.configuration_set_name

  dkim_signing_attributes {
    next_signing_key_length = "RSA_2048_BIT"
  }
}

resource "aws_route53_record" "ses_dkim" {
  count   = var.ses_domain != null && var.route53_zone_id != null ? 3 : 0
  zone_id = var.route53_zone_id
  name    = "${aws_sesv2_email_identity.domain[0].dkim_signing_attributes[0].tokens[count.index]}._domainkey.${var.ses_domain}"
  type    = "CNAME"
  ttl     = 1800
  records = ["${aws_sesv2_email_identity.domain[0].dkim_signing_attributes[0].tokens[count.index]}.dkim.amazonses.com"]
}

locals {
  ses_identity_arn = var.ses_domain == null ? aws_sesv2_email_identity.sender[0].arn : aws_sesv2_email_identity.domain[0].arn
  ses_dkim_records = var.ses_domain == null ? [] : [
    for t in aws_sesv2_email_identity.domain[0].dkim_signing_attributes[0].tokens : {
      name  = "${t}._domainkey.${var.ses_domain}"
      type  = "CNAME"
      value = "${t}.dkim.amazonses.com"
    }
  ]
}
