terraform {
  # 1.11: write-only attributes (aws_ssm_parameter.value_wo) and ephemeral
  # resources/variables, so generated secrets never reach the plan or state.
  required_version = ">= 1.11.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.7" # ephemeral "random_password"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.1" # ephemeral "tls_private_key"
    }
  }
}
