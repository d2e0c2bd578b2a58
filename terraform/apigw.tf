# API Gateway HTTP API in front of the api function (payload format 2.0, as
# lambda_http expects). Every path goes to the function ($default), so the
# app answers unknown paths with its own JSON 404 and security headers; the
# credential and mail-sending routes are also declared explicitly so they
# get their own, tighter stage throttling.

locals {
  # Routes that check a password, a code, a reset link or the admin key, or
  # that send a mail, in the JSON API and in the browser pages alike: each
  # gets the auth limits (a cap on argon2 work and on SES mail, under the
  # app's own per-client limits). Every other path, the 256-bit links and
  # tokens (email verification, token refresh) and logout among them, goes
  # to $default and the stage's limits. tests/tests/terraform.rs holds this
  # list to api/src/lib.rs's router: every POST route is here but those.
  # The admin GETs come with their HEAD (answered by the GET handler, whose
  # status alone tells a right key from a wrong one).
  api_auth_routes = toset([
    "POST /v1/register",
    "POST /v1/verify-email/resend",
    "POST /v1/login",
    "POST /v1/login/otp",
    "POST /v1/login/otp/resend",
    "POST /v1/password",
    "POST /v1/logout/others",
    "POST /v1/sessions/{id}/revoke",
    "POST /v1/me/delete",
    "POST /v1/me/email",
    "POST /v1/email/confirm",
    "POST /v1/password/forgot",
    "POST /v1/password/reset",
    "POST /otp",
    "GET /v1/admin/users/{id}/audit",
    "HEAD /v1/admin/users/{id}/audit",
    "GET /v1/admin/audit",
    "HEAD /v1/admin/audit",
    "GET /v1/admin/stats",
    "HEAD /v1/admin/stats",
    "POST /register",
    "POST /register/resend",
    "POST /login",
    "POST /login/code",
    "POST /login/code/resend",
    "POST /password/forgot",
    "POST /password/reset",
    "POST /sessions/end",
    "POST /account/delete",
    "POST /account/email",
    "POST /account/password",
    "POST /email/confirm",
    "POST /one-time-code/send",
    "POST /one-time-code/verify",
    "POST /admin",
    "POST /admin/audit",
  ])
}

resource "aws_apigatewayv2_api" "http" {
  name          = "${var.name_prefix}-http"
  protocol_type = "HTTP"
  description   = "latchkey authentication API"
  # With a custom domain the execute-api hostname stays reachable; turning it
  # off would also break the default public_base_url, so it is left on.
}

resource "aws_apigatewayv2_integration" "api" {
  api_id                 = aws_apigatewayv2_api.http.id
  integration_type       = "AWS_PROXY"
  integration_uri        = aws_lambda_function.api.invoke_arn
  payload_format_version = "2.0"
  timeout_milliseconds   = var.api_timeout_seconds * 1000 + 500
}

resource "aws_apigatewayv2_route" "default" {
  #checkov:skip=CKV_AWS_309:This is the authentication service itself: register/login/verify must be reachable without credentials, and the app checks bearer tokens on the routes that need them (/v1/me).
  api_id    = aws_apigatewayv2_api.http.id
  route_key = "$default"
  target    = "integrations/${aws_apigatewayv2_integration.api.id}"
}

# The auth routes, declared so that route settings can name them (a route
# setting needs a route of its own).
resource "aws_apigatewayv2_route" "app" {
  #checkov:skip=CKV_AWS_309:This is the authentication service itself: register/login/verify must be reachable without credentials, and the app checks bearer tokens on the routes that need them (/v1/me).
  for_each  = local.api_auth_routes
  api_id    = aws_apigatewayv2_api.http.id
  route_key = each.value
  target    = "integrations/${aws_apigatewayv2_integration.api.id}"
}

resource "aws_cloudwatch_log_group" "api_access" {
  name              = "/aws/apigateway/${var.name_prefix}-http"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

resource "aws_apigatewayv2_stage" "default" {
  api_id      = aws_apigatewayv2_api.http.id
  name        = "$default"
  auto_deploy = true

  default_route_settings {
    throttling_rate_limit    = var.api_throttle_rate_limit
    throttling_burst_limit   = var.api_throttle_burst_limit
    detailed_metrics_enabled = true
  }

  dynamic "route_settings" {
    for_each = local.api_auth_routes
    content {
      route_key              = route_settings.value
      throttling_rate_limit  = var.api_auth_throttle_rate_limit
      throttling_burst_limit = var.api_auth_throttle_burst_limit
    }
  }

  # JSON access log: no bodies, no query strings, no auth headers.
  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.api_access.arn
    format = jsonencode({
      requestId        = "$context.requestId"
      time             = "$context.requestTime"
      ip               = "$context.identity.sourceIp"
      method           = "$context.httpMethod"
      path             = "$context.path"
      routeKey         = "$context.routeKey"
      status           = "$context.status"
      protocol         = "$context.protocol"
      responseLength   = "$context.responseLength"
      latencyMs        = "$context.responseLatency"
      integrationMs    = "$context.integration.latency"
      integrationError = "$context.integrationErrorMessage"
      userAgent        = "$context.identity.userAgent"
    })
  }

  depends_on = [aws_apigatewayv2_route.app, aws_apigatewayv2_route.default]
}

# ---------------------------------------------------------------- optional custom domain

resource "aws_apigatewayv2_domain_name" "custom" {
  count       = var.custom_domain_name == null ? 0 : 1
  domain_name = var.custom_domain_name

  domain_name_configuration {
    certificate_arn = var.custom_domain_certificate_arn
    endpoint_type   = "REGIONAL"
    security_policy = "TLS_1_2"
  }
}

resource "aws_apigatewayv2_api_mapping" "custom" {
  count       = var.custom_domain_name == null ? 0 : 1
  api_id      = aws_apigatewayv2_api.http.id
  domain_name = aws_apigatewayv2_domain_name.custom[0].id
  stage       = aws_apigatewayv2_stage.default.id
}

resource "aws_route53_record" "custom_domain" {
  count   = var.custom_domain_name != null && var.route53_zone_id != null ? 1 : 0
  zone_id = var.route53_zone_id
  name    = var.custom_domain_name
  type    = "A"

  alias {
    name                   = aws_apigatewayv2_domain_name.custom[0].domain_name_configuration[0].target_domain_name
    zone_id                = aws_apigatewayv2_domain_name.custom[0].domain_name_configuration[0].hosted_zone_id
    evaluate_target_health = false
  }
}
