terraform {
  # 1.9 brings validation rules that refer to other input variables.
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.75, < 6.0"
    }
  }
}
