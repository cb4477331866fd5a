# The global stack: one latency-routed name over every region of regions.yaml.
# Drain a region: drained = true here, then apply (docs/operations.md).

tags = {
  app           = "edge-fleet"
  region        = "global"
  owner         = "platform-team"
  "cost-center" = "rtb-bidding"
}

state_bucket        = "example-edge-fleet-tfstate"
state_bucket_region = "us-east-1"

zone_id      = "Z0000000EXAMPLE"
bid_name     = "bid.edge-fleet.example.com"
control_name = "control.edge-fleet.example.com"

regions = {
  us-east      = { aws_region = "us-east-1" }
  eu-west      = { aws_region = "eu-west-1" }
  ap-southeast = { aws_region = "ap-southeast-1" }
}
