# Offline plan/apply of the whole stack against a mocked AWS provider: no credentials, no
# network. Asserts the properties the issue asks for; run with `terraform test` in inference/tf.

mock_provider "aws" {
  # The few computed values the modules parse or compare need realistic shapes.
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012", arn = "arn:aws:sts::123456789012:assumed-role/deployer/terraform" }
  }
  mock_data "aws_region" {
    defaults = { name = "us-east-1" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  # The deployer the key policy names by default (the role behind Terraform's session).
  mock_data "aws_iam_session_context" {
    defaults = { issuer_arn = "arn:aws:iam::123456789012:role/deployer" }
  }
  # Resources whose ARNs the provider validates where they are passed on. Lambda ARNs stay
  # random so each function's ARN is distinct in the definition assertions.
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000" }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:us-east-1:123456789012:log-group:mock" }
  }
  mock_resource "aws_sns_topic" {
    defaults = { arn = "arn:aws:sns:us-east-1:123456789012:mock" }
  }
  mock_resource "aws_sfn_state_machine" {
    defaults = { arn = "arn:aws:states:us-east-1:123456789012:stateMachine:landcover-test-pipeline" }
  }
  mock_resource "aws_secretsmanager_secret" {
    defaults = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:landcover-test/ledger-AbCdEf" }
  }
  mock_resource "aws_ecr_repository" {
    defaults = { repository_url = "123456789012.dkr.ecr.us-east-1.amazonaws.com/landcover-test" }
  }
  mock_resource "aws_sqs_queue" {
    defaults = { arn = "arn:aws:sqs:us-east-1:123456789012:landcover-test-pipeline-trigger-dead-letters" }
  }
  mock_resource "aws_cloudwatch_event_rule" {
    defaults = { arn = "arn:aws:events:us-east-1:123456789012:rule/landcover-test-pipeline-object-created" }
  }
}

# The rule's target and permission validate the trigger's ARN; the chain's stay random (above).
override_resource {
  target = module.trigger.aws_lambda_function.trigger
  values = { arn = "arn:aws:lambda:us-east-1:123456789012:function:landcover-test-pipeline-trigger" }
}

# Generates the ledger password in production; here a real provider that is configured
# with dummy credentials and never called (db_generate_password = false below).
provider "aws" {
  alias                       = "secrets"
  region                      = "us-east-1"
  access_key                  = "mock"
  secret_key                  = "mock"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
}

variables {
  project         = "landcover-test"
  model_name      = "chesapeake-landcover"
  image_tag       = "test"
  infer_memory_mb = 1024 # setup/conf/infra/default.yaml renders these in real use
  infer_timeout_s = 900
  # Mock providers cannot serve ephemeral resources (Terraform 1.11), so the generated
  # password path is exercised by the opt-in apply against moto instead.
  db_generate_password = false
  db_master_password   = "mock-only-not-a-secret"
}

# One apply of the default stack carries most assertions: each run costs a provider start
# and an apply, and the suite must stay fast on a shared 2-core machine.
run "default_stack" {
  command = apply

  # --- The deployed definition is the ASL file with the ARNs substituted.
  assert {
    condition = jsondecode(module.sfn.definition) == jsondecode(templatefile(output.state_machine_definition_file, {
      process_function_arn  = module.lambda.arns["process"]
      infer_function_arn    = module.lambda.arns["infer"]
      assemble_function_arn = module.lambda.arns["assemble"]
      observe_function_arn  = module.lambda.arns["observe"]
      failure_function_arn  = module.lambda.arns["failure"]
      notify_function_arn   = module.lambda.arns["notify"]
      manifest_bucket       = module.s3.names["predictions"]
    }))
    error_message = "The deployed definition is not the ASL file with the ARNs substituted."
  }
  assert {
    condition     = length(distinct(values(module.lambda.arns))) == 6 && alltrue([for arn in values(module.lambda.arns) : strcontains(module.sfn.definition, arn)])
    error_message = "Each of the six distinct Lambda ARNs must appear in the definition."
  }
  assert {
    condition     = !strcontains(module.sfn.definition, "$${")
    error_message = "A template variable was left unsubstituted."
  }
  assert {
    condition     = strcontains(module.sfn.definition, module.s3.names["predictions"])
    error_message = "The manifest bucket was not substituted."
  }

  # --- The schedule targets the state machine; its role only starts it.
  assert {
    condition     = module.scheduler.target_arn == module.sfn.arn
    error_message = "The schedule does not target the state machine."
  }
  assert {
    condition = jsondecode(module.scheduler.role_policy).Statement == [{
      Effect   = "Allow"
      Action   = "states:StartExecution"
      Resource = module.sfn.arn
    }]
    error_message = "The scheduler role may do more than states:StartExecution on the machine."
  }

  # --- Lambda memory, timeouts, handlers, env and VPC config.
  assert {
    condition     = module.lambda.settings["infer"].memory_mb == var.infer_memory_mb && var.infer_memory_mb == 1024
    error_message = "infer must default to infer_memory_mb (1024 MB, the benchmark's measured need)."
  }
  assert {
    condition     = module.lambda.settings["infer"].timeout_s == 900 && module.lambda.settings["process"].timeout_s == 300
    error_message = "Default timeouts are not as configured."
  }
  assert {
    condition     = toset(keys(module.lambda.arns)) == toset(["process", "infer", "assemble", "observe", "failure", "notify"])
    error_message = "Expected process, infer, assemble, observe, failure and notify functions."
  }
  assert {
    condition     = module.lambda.handlers["infer"][0] == "inference.handlers.infer.handler" && module.lambda.handlers["assemble"][0] == "inference.handlers.assemble.handler" && module.lambda.handlers["failure"][0] == "inference.handlers.failure.handler"
    error_message = "Each function runs its own handler from the shared image."
  }
  assert {
    condition = alltrue([for k, env in module.lambda.environments : alltrue([
      for name in ["INPUT_URI", "OUTPUT_URI", "REGISTRY_URI", "MODEL_NAME", "LEDGER_SECRET_ARN", "BACKEND", "INFER_MEMORY_MB", "INFER_TIMEOUT_S", "MANIFEST_URI"] :
      contains(keys(env), name)
    ])])
    error_message = "Every function needs the ChainSettings environment."
  }
  # What the dispatcher picks is what is served: BACKEND=auto (OpenVINO or ONNX Runtime by CPU), and
  # the default x86_64 functions price their GB-seconds as x86_64.
  assert {
    condition     = alltrue([for k, env in module.lambda.environments : env["BACKEND"] == "auto" && env["LAMBDA_ARCHITECTURE"] == "x86_64"])
    error_message = "By default every function must serve BACKEND=auto and see LAMBDA_ARCHITECTURE=x86_64."
  }
  assert {
    condition     = alltrue([for k, a in module.lambda.architectures : a == tolist(["x86_64"])]) && module.trigger.architectures == tolist(["x86_64"])
    error_message = "By default every function (the trigger's too) runs on x86_64."
  }
  assert {
    condition     = module.lambda.environments["infer"]["LEDGER_SECRET_ARN"] == module.rds[0].secret_arn
    error_message = "Functions must read the generated ledger secret."
  }
  assert {
    condition     = alltrue([for k, subnets in module.lambda.vpc_subnet_ids : toset(subnets) == toset(module.network.private_subnet_ids)])
    error_message = "Every function runs in the private subnets."
  }

  # --- RDS is private and encrypted.
  assert {
    condition     = module.rds[0].publicly_accessible == false
    error_message = "RDS must not be publicly accessible."
  }
  assert {
    condition     = module.rds[0].storage_encrypted == true
    error_message = "RDS storage must be encrypted."
  }

  # --- Every bucket blocks public access, is encrypted and versioned.
  assert {
    condition     = toset(keys(module.s3.names)) == toset(["data", "predictions", "registry"])
    error_message = "Expected data, predictions and registry buckets."
  }
  assert {
    condition     = alltrue([for k, flags in module.s3.public_access_blocks : alltrue(values(flags))])
    error_message = "Every bucket must block all public access."
  }
  assert {
    condition     = alltrue([for k, e in module.s3.encryption : e.sse_algorithm == "aws:kms" && e.kms_master_key_id == module.kms.key_arn])
    error_message = "Every bucket must default to SSE-KMS with the stack key."
  }
  assert {
    condition     = alltrue([for k, status in module.s3.versioning : status == "Enabled"])
    error_message = "Every bucket must be versioned."
  }
  assert {
    condition     = alltrue([for k, days in module.s3.abort_incomplete_upload_days : days == 7])
    error_message = "Every bucket's lifecycle must abort incomplete multipart uploads."
  }

  # --- The key policy is least privilege.
  assert {
    condition     = alltrue([for s in jsondecode(module.kms.policy).Statement : !contains(flatten([s.Action]), "kms:*")])
    error_message = "No key policy statement may grant kms:*."
  }
  assert {
    condition     = [for s in jsondecode(module.kms.policy).Statement : s.Sid if contains(flatten([try(s.Principal.AWS, [])]), "arn:aws:iam::123456789012:root")] == ["KeyAdministration"]
    error_message = "The account root may appear only in the administration statement."
  }
  assert {
    condition = alltrue([for s in jsondecode(module.kms.policy).Statement : alltrue([
      for a in flatten([s.Action]) : !can(regex("^kms:(\\*|Encrypt|Decrypt|ReEncrypt|GenerateDataKey|GenerateMac|Sign|Verify)", a))
    ]) if s.Sid == "KeyAdministration"])
    error_message = "The administrators may manage the key but not encrypt, decrypt or generate data keys."
  }
  assert {
    # Every statement that uses the key is bound to a service, a log group or an alarm.
    condition = alltrue([for s in jsondecode(module.kms.policy).Statement :
      length(setintersection(keys(merge(values(s.Condition)...)), ["kms:ViaService", "kms:EncryptionContext:aws:logs:arn", "aws:SourceArn"])) > 0
    if s.Sid != "KeyAdministration"])
    error_message = "A key policy statement other than administration has no kms:ViaService / encryption context / aws:SourceArn condition."
  }
  assert {
    condition = alltrue([for s in jsondecode(module.kms.policy).Statement :
      try(s.Principal == { AWS = ["arn:aws:iam::123456789012:role/deployer"] } &&
      !contains(s.Condition.StringEquals["kms:ViaService"], "ec2.us-east-1.amazonaws.com"), false)
    if startswith(s.Sid, "Deployer")])
    error_message = "The deployer statements must name the identity running Terraform, through the stack's services (no ec2 without the access host)."
  }
  assert {
    condition = alltrue([for k, arn in module.iam.principal_arns : anytrue([for s in jsondecode(module.kms.policy).Statement :
      try(s.Sid == "${title(k)}FunctionDecrypts" && s.Principal.AWS == [arn] && s.Action == ["kms:Decrypt"] &&
      contains(s.Condition.StringEquals["kms:ViaService"], "lambda.us-east-1.amazonaws.com"), false)
    ])])
    error_message = "Each execution role must decrypt (its environment, objects, secret) through the stack's services only."
  }
  assert {
    condition     = toset([for s in jsondecode(module.kms.policy).Statement : s.Sid if contains(flatten([s.Action]), "kms:GenerateDataKey")]) == toset(["ProcessFunctionWritesObjects", "InferFunctionWritesObjects", "AssembleFunctionWritesObjects", "ObserveFunctionWritesObjects", "NotifyFunctionWritesObjects", "NotifyFunctionPublishesNotices"])
    error_message = "Only the functions that write objects (through S3) or publish notices (through SNS) may generate data keys; failure does neither."
  }
  assert {
    condition = alltrue([for s in jsondecode(module.kms.policy).Statement :
      try(s.Condition.StringEquals["kms:ViaService"] == ["s3.us-east-1.amazonaws.com"] && s.Action == ["kms:GenerateDataKey"], false)
    if endswith(s.Sid, "WritesObjects")])
    error_message = "Data keys for object writes only through S3."
  }
  assert {
    condition = anytrue([for s in jsondecode(module.kms.policy).Statement :
      try(s.Principal == { Service = "logs.us-east-1.amazonaws.com" } &&
        alltrue([for name in values(module.cloudwatch.function_log_group_names) :
          can(regex("^${replace(s.Condition.ArnLike["kms:EncryptionContext:aws:logs:arn"], "*", ".*")}$", "arn:aws:logs:us-east-1:123456789012:log-group:${name}"))
      ]), false)
    ])
    error_message = "CloudWatch Logs must have a service statement bound (encryption context) to log groups that cover the stack's."
  }
  assert {
    condition = anytrue([for s in jsondecode(module.kms.policy).Statement :
      try(s.Principal == { Service = "cloudwatch.amazonaws.com" } && s.Condition.StringEquals["aws:SourceAccount"] == "123456789012" &&
        alltrue([for name in module.cloudwatch.alarm_names :
          can(regex("^${replace(s.Condition.ArnLike["aws:SourceArn"], "*", ".*")}$", "arn:aws:cloudwatch:us-east-1:123456789012:alarm:${name}"))
      ]), false)
    ])
    error_message = "CloudWatch alarms may use the key (encrypted SNS topic) only for this stack's alarms."
  }
  assert {
    condition = anytrue([for s in jsondecode(module.kms.policy).Statement :
      try(s.Sid == "StateMachineReadsManifests" && s.Principal.AWS == [module.sfn.role_arn] && s.Action == ["kms:Decrypt"], false)
    ])
    error_message = "The state machine role must decrypt the manifests through S3."
  }

  # --- Completion notices: an encrypted topic, published to by the notify function only.
  assert {
    condition     = module.lambda.environments["notify"]["NOTICE_TOPIC_ARN"] == module.notices.topic_arn && module.notices.topic_kms_key == module.kms.key_arn
    error_message = "notify must publish to the notice topic, which the stack key encrypts."
  }
  assert {
    condition     = alltrue([for k, env in module.lambda.environments : !contains(keys(env), "NOTICE_TOPIC_ARN") if k != "notify"])
    error_message = "Only notify knows the notice topic."
  }
  assert {
    condition = [for s in jsondecode(module.iam.role_policies["notify"]).Statement : s.Resource if s.Sid == "PublishNotices"] == [[module.notices.topic_arn]] && alltrue([
      for k, p in module.iam.role_policies : !strcontains(p, "sns:Publish") if k != "notify"
    ])
    error_message = "sns:Publish on the notice topic is notify's alone."
  }
  assert {
    condition = anytrue([for s in jsondecode(module.kms.policy).Statement :
      try(s.Sid == "NotifyFunctionPublishesNotices" && s.Condition.StringEquals["kms:ViaService"] == ["sns.us-east-1.amazonaws.com"], false)
    ])
    error_message = "notify may use the key for the topic through SNS only."
  }
  assert {
    condition     = length(module.notices.subscriptions) == 0
    error_message = "No notice subscriptions unless notice_subscriptions names them."
  }
  assert {
    condition     = contains(module.network.interface_endpoint_services, "sns")
    error_message = "notify publishes from the private subnets: the VPC needs an SNS endpoint."
  }

  # --- Runs triggered by new imagery: bucket -> EventBridge -> rule on the input prefix -> trigger.
  assert {
    condition     = module.trigger.eventbridge_notifications == true
    error_message = "The data bucket must send its events to EventBridge."
  }
  assert {
    condition = jsondecode(module.trigger.event_pattern) == {
      source        = ["aws.s3"]
      "detail-type" = ["Object Created"]
      detail = {
        bucket = { name = [module.s3.names["data"]] }
        object = { key = [{ prefix = "incoming/" }] }
      }
    }
    error_message = "The rule must match Object Created under the input prefix of the data bucket (inference.trigger.event_pattern)."
  }
  assert {
    condition     = module.trigger.rule_target_arn == module.trigger.function_arn && module.trigger.handler[0] == "inference.handlers.trigger.handler"
    error_message = "The rule must invoke the trigger function, which runs the trigger handler."
  }
  assert {
    condition     = length(module.trigger.environment) == 1 && module.trigger.environment["STATE_MACHINE_ARN"] == module.sfn.arn && !module.trigger.vpc_configured
    error_message = "The trigger knows only the machine (and the window when set) and runs outside the VPC."
  }
  assert {
    condition = jsondecode(module.trigger.role_policy).Statement[2] == {
      Sid      = "StartAndListTheMachine"
      Effect   = "Allow"
      Action   = ["states:StartExecution", "states:ListExecutions"]
      Resource = module.sfn.arn
      } && alltrue([for s in jsondecode(module.trigger.role_policy).Statement :
        !contains(flatten([s.Action]), "states:*") && (s.Resource != "*" || s.Sid == "Tracing")
    ])
    error_message = "The trigger role may start, list and describe executions of the one machine, and nothing broader."
  }
  assert {
    condition     = module.scheduler.target_arn == module.sfn.arn
    error_message = "The schedule stays as the safety net."
  }
  assert {
    condition = alltrue([for s in jsondecode(module.kms.policy).Statement :
      alltrue([for name in module.trigger.alarm_names :
        can(regex("^${replace(s.Condition.ArnLike["aws:SourceArn"], "*", ".*")}$", "arn:aws:cloudwatch:us-east-1:123456789012:alarm:${name}"))
      ])
    if s.Sid == "StackAlarmsPublishToEncryptedTopic"])
    error_message = "The trigger's alarms must be able to publish to the encrypted alarm topic."
  }
}

run "configured_memory_timeouts_and_access_host" {
  command = apply

  variables {
    infer_memory_mb   = 5120
    infer_timeout_s   = 600
    process_memory_mb = 512
    observe_timeout_s = 120
    # The optional SSM access path rides along on this apply.
    enable_access_host = true
    # So does a dedicated key administrator in place of the account root.
    kms_admin_arns = ["arn:aws:iam::123456789012:role/key-admin"]
  }

  assert {
    condition = alltrue([for s in jsondecode(module.kms.policy).Statement :
      s.Principal.AWS == ["arn:aws:iam::123456789012:role/key-admin"] if s.Sid == "KeyAdministration"
    ]) && !strcontains(module.kms.policy, ":root")
    error_message = "kms_admin_arns must replace the account root as the key administrator."
  }

  assert {
    condition = alltrue([for s in jsondecode(module.kms.policy).Statement :
      try(contains(s.Condition.StringEquals["kms:ViaService"], "ec2.us-east-1.amazonaws.com"), false)
    if startswith(s.Sid, "Deployer")])
    error_message = "With the access host, the deployer must reach the key through EC2 (its encrypted root volume)."
  }

  assert {
    condition     = module.lambda.settings["infer"] == { memory_mb = 5120, timeout_s = 600 }
    error_message = "infer memory/timeout not as configured."
  }

  assert {
    condition     = module.lambda.settings["process"].memory_mb == 512 && module.lambda.settings["observe"].timeout_s == 120
    error_message = "process/observe settings not as configured."
  }

  assert {
    condition     = alltrue([for k, env in module.lambda.environments : env["INFER_MEMORY_MB"] == "5120" && env["INFER_TIMEOUT_S"] == "600"])
    error_message = "Every function (process sizes blocks, observe prices them) must see the infer memory and timeout."
  }

  assert {
    condition     = module.lambda.settings["assemble"] == { memory_mb = 5120, timeout_s = 600 }
    error_message = "assemble gets the infer budget."
  }

  assert {
    condition     = length(module.access) == 1 && startswith(output.grafana_tunnel_command, "aws ssm start-session")
    error_message = "enable_access_host must create the SSM host and print the port-forward command."
  }
}

run "notice_subscriptions_and_trigger_window" {
  command = plan

  variables {
    trigger_window_s = 120
    notice_subscriptions = [
      { protocol = "email", endpoint = "ops@example.org" },
      { protocol = "https", endpoint = "https://hooks.example.org/landcover" },
    ]
  }

  assert {
    condition     = module.trigger.environment["TRIGGER_WINDOW_S"] == "120"
    error_message = "trigger_window_s must reach the trigger function as TRIGGER_WINDOW_S."
  }
  assert {
    condition = toset(module.notices.subscriptions) == toset([
      { protocol = "email", endpoint = "ops@example.org" },
      { protocol = "https", endpoint = "https://hooks.example.org/landcover" },
    ])
    error_message = "Each notice_subscriptions entry must subscribe to the notice topic."
  }
}

run "notice_subscriptions_reject_other_protocols" {
  command = plan

  variables {
    notice_subscriptions = [{ protocol = "sms", endpoint = "+15555550100" }]
  }

  expect_failures = [var.notice_subscriptions]
}

run "arm64_functions_and_onnx_backend" {
  command = plan

  variables {
    lambda_architecture = "arm64"
    backend             = "onnx"
  }

  assert {
    condition     = length(module.lambda.architectures) == 6 && alltrue([for k, a in module.lambda.architectures : a == tolist(["arm64"])])
    error_message = "lambda_architecture = arm64 must put every chain function on arm64."
  }
  assert {
    condition     = module.trigger.architectures == tolist(["arm64"])
    error_message = "The trigger runs the same image, so it must be arm64 too."
  }
  assert {
    condition     = alltrue([for k, env in module.lambda.environments : env["LAMBDA_ARCHITECTURE"] == "arm64" && env["BACKEND"] == "onnx"])
    error_message = "Every function must see LAMBDA_ARCHITECTURE=arm64 (its GB-second price) and the configured BACKEND."
  }
}

run "backend_rejects_unknown_values" {
  command = plan

  variables {
    backend = "openvino" # not a ChainDefaults.backend value: auto picks OpenVINO where it is fastest
  }

  expect_failures = [var.backend]
}

run "lambda_architecture_rejects_unknown_values" {
  command = plan

  variables {
    lambda_architecture = "aarch64" # Lambda spells it arm64
  }

  expect_failures = [var.lambda_architecture]
}

run "without_rds_uses_the_given_secret" {
  command = plan

  variables {
    enable_rds        = false
    ledger_secret_arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ledger-AbCdEf"
  }

  assert {
    condition     = length(module.rds) == 0 && output.ledger_secret_arn == var.ledger_secret_arn
    error_message = "enable_rds=false must create no database and pass the given secret."
  }
}
