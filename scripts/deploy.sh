#!/usr/bin/env bash
# Deploys fhir-bulk into an Azure subscription in three stages:
#   1. infra   infra/main.bicep: storage, Key Vault, monitoring, the Elastic Premium plan and
#              the Function App with its identity and roles;
#   2. code    the package (scripts/package.sh) uploaded to the `deployments` container under a
#              name made from its SHA-256, which the app runs from; skipped when already there;
#   3. events  infra/eventgrid.bicep: Event Grid subscriptions from the input containers to
#              the functions (they need the functions to exist, hence last).
# Re-running it with the same inputs changes nothing that is already right. --what-if shows
# what stage 1 would change and changes nothing.
#
# The client secret of a service principal is read from the environment variable
# FHIRBULK_FHIR_CLIENT_SECRET (never a flag, never printed); it is written to Key Vault when
# set, and an existing one is kept when it is not.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
INFRA_DEPLOYMENT=fhirbulk-infra
EVENTS_DEPLOYMENT=fhirbulk-events
RETRY_SECS=${DEPLOY_RETRY_SECS:-20}
RETRIES=${DEPLOY_RETRIES:-15}

usage() {
  cat <<'EOT'
Usage: scripts/deploy.sh --subscription ID --resource-group NAME --prefix PREFIX --fhir-url URL
                         [--location LOCATION] [--audience AUDIENCE]
                         [--auth managed-identity|service-principal|none]
                         [--tenant-id ID --client-id ID] [--fhir-service-id RESOURCE_ID]
                         [--package ZIP] [--what-if]

  --subscription      subscription id or name
  --resource-group    resource group (created in --location if it does not exist)
  --location          Azure region, e.g. westeurope (default: the group's)
  --prefix            3-11 lowercase letters and digits, start of every resource name
  --fhir-url          FHIR R4 base URL the app loads into and exports from
  --audience          token audience of the FHIR server (default: origin of --fhir-url)
  --auth              how the app signs in to the FHIR server (default managed-identity);
                      service-principal needs --tenant-id, --client-id and, on the first
                      deployment, FHIRBULK_FHIR_CLIENT_SECRET in the environment
  --fhir-service-id   resource id of an Azure Health Data Services FHIR service: the app gets
                      FHIR Data Contributor on it
  --package           the zip to deploy (default: built now by scripts/package.sh)
  --what-if           show what the infrastructure deployment would change; change nothing
EOT
}

fail() {
  echo "deploy.sh: $*" >&2
  exit 1
}

SUBSCRIPTION='' GROUP='' LOCATION='' PREFIX='' FHIR_URL='' AUDIENCE='' AUTH=managed-identity
TENANT_ID='' CLIENT_ID='' FHIR_SERVICE_ID='' PACKAGE='' WHAT_IF=false
while [ $# -gt 0 ]; do
  case "$1" in
    --subscription) SUBSCRIPTION=${2:-} ;;
    --resource-group) GROUP=${2:-} ;;
    --location) LOCATION=${2:-} ;;
    --prefix) PREFIX=${2:-} ;;
    --fhir-url) FHIR_URL=${2:-} ;;
    --audience) AUDIENCE=${2:-} ;;
    --auth) AUTH=${2:-} ;;
    --tenant-id) TENANT_ID=${2:-} ;;
    --client-id) CLIENT_ID=${2:-} ;;
    --fhir-service-id) FHIR_SERVICE_ID=${2:-} ;;
    --package) PACKAGE=${2:-} ;;
    --what-if) WHAT_IF=true; shift; continue ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; fail "unknown argument '$1'" ;;
  esac
  [ $# -ge 2 ] || fail "$1 needs a value"
  shift 2
done

missing=()
[ -n "$SUBSCRIPTION" ] || missing+=(--subscription)
[ -n "$GROUP" ] || missing+=(--resource-group)
[ -n "$PREFIX" ] || missing+=(--prefix)
[ -n "$FHIR_URL" ] || missing+=(--fhir-url)
[ ${#missing[@]} -eq 0 ] || { usage >&2; fail "missing ${missing[*]}"; }
PREFIX_RULE='^[a-z][a-z0-9]{2,10}$'
[[ "$PREFIX" =~ $PREFIX_RULE ]] || fail "--prefix '$PREFIX' must be 3-11 lowercase letters and digits starting with a letter (it starts the storage account and Key Vault names)"
[[ "$FHIR_URL" =~ ^https?://[^/]+ ]] || fail "--fhir-url '$FHIR_URL' is not an http(s) URL"
case "$AUTH" in
  managed-identity) FHIR_AUTH=managed-identity ;;
  none) FHIR_AUTH=none ;;
  service-principal)
    FHIR_AUTH=client-secret
    if [ -z "$TENANT_ID" ] || [ -z "$CLIENT_ID" ]; then
      fail "--auth service-principal needs --tenant-id and --client-id"
    fi
    ;;
  *) fail "--auth must be managed-identity, service-principal or none, not '$AUTH'" ;;
esac
if [ -n "$FHIR_SERVICE_ID" ]; then
  [[ "$FHIR_SERVICE_ID" =~ ^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.HealthcareApis/workspaces/[^/]+/fhirservices/[^/]+$ ]] ||
    fail "--fhir-service-id must be a FHIR service id: /subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.HealthcareApis/workspaces/<workspace>/fhirservices/<name>"
fi

# Prerequisites, each with what to do when it is missing.
command -v az >/dev/null 2>&1 || fail "the Azure CLI (az) is not installed: see https://learn.microsoft.com/cli/azure/install-azure-cli"
az account show --output none 2>/dev/null || fail "az is not logged in: run 'az login' (or 'az login --service-principal ...' in a pipeline)"
az bicep version --output none 2>/dev/null || fail "az cannot compile Bicep: run 'az bicep install'"

if [ -z "$PACKAGE" ]; then
  echo "deploy.sh: building the package (scripts/package.sh)" >&2
  PACKAGE=$("$ROOT/scripts/package.sh")
fi
[ -f "$PACKAGE" ] || fail "package '$PACKAGE' does not exist: build it with scripts/package.sh"
SHA=$(sha256sum "$PACKAGE" | cut -c1-64)
BLOB="fhir-bulk-${SHA:0:16}.zip"

az account set --subscription "$SUBSCRIPTION"

# Who deploys: they may upload packages to the deployments container.
case "$(az account show --query user.type --output tsv)" in
  servicePrincipal)
    DEPLOYER_TYPE=ServicePrincipal
    DEPLOYER_ID=$(az ad sp show --id "$(az account show --query user.name --output tsv)" --query id --output tsv)
    ;;
  *)
    DEPLOYER_TYPE=User
    DEPLOYER_ID=$(az ad signed-in-user show --query id --output tsv)
    ;;
esac

if [ "$(az group exists --name "$GROUP")" != true ]; then
  [ -n "$LOCATION" ] || fail "resource group '$GROUP' does not exist: give --location to create it"
  if $WHAT_IF; then
    echo "deploy.sh: what-if: resource group '$GROUP' does not exist; a deployment would create it in $LOCATION with everything in infra/main.bicep"
    exit 0
  fi
  az group create --name "$GROUP" --location "$LOCATION" --output none
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PARAMS="$WORK/main.parameters.json"
(
  umask 077
  P_PREFIX=$PREFIX P_FHIR_URL=$FHIR_URL P_AUDIENCE=$AUDIENCE P_AUTH=$FHIR_AUTH \
    P_TENANT=$TENANT_ID P_CLIENT=$CLIENT_ID P_FHIR_SERVICE=$FHIR_SERVICE_ID P_BLOB=$BLOB \
    P_DEPLOYER=$DEPLOYER_ID P_DEPLOYER_TYPE=$DEPLOYER_TYPE P_LOCATION=$LOCATION \
    P_SECRET=${FHIRBULK_FHIR_CLIENT_SECRET:-} python3 - "$PARAMS" <<'PY'
import json, os, sys
e = os.environ
values = {
    "prefix": e["P_PREFIX"],
    "fhirUrl": e["P_FHIR_URL"],
    "fhirAudience": e["P_AUDIENCE"],
    "fhirAuth": e["P_AUTH"],
    "fhirTenantId": e["P_TENANT"],
    "fhirClientId": e["P_CLIENT"],
    "fhirServiceResourceId": e["P_FHIR_SERVICE"],
    "packageBlobName": e["P_BLOB"],
    "deployerObjectId": e["P_DEPLOYER"],
    "deployerPrincipalType": e["P_DEPLOYER_TYPE"],
}
if e["P_LOCATION"]:
    values["location"] = e["P_LOCATION"]
if e["P_AUTH"] == "client-secret" and e["P_SECRET"]:
    values["fhirClientSecret"] = e["P_SECRET"]
with open(sys.argv[1], "w") as f:
    json.dump({"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
               "contentVersion": "1.0.0.0",
               "parameters": {k: {"value": v} for k, v in values.items()}}, f, indent=2)
PY
)

if $WHAT_IF; then
  az deployment group what-if --resource-group "$GROUP" --name "$INFRA_DEPLOYMENT" \
    --template-file "$ROOT/infra/main.bicep" --parameters "@$PARAMS"
  echo "deploy.sh: what-if: then the package $BLOB would be uploaded unless it is there, and infra/eventgrid.bicep deployed"
  exit 0
fi

echo "deploy.sh: 1/3 infrastructure ($INFRA_DEPLOYMENT)" >&2
az deployment group create --resource-group "$GROUP" --name "$INFRA_DEPLOYMENT" \
  --template-file "$ROOT/infra/main.bicep" --parameters "@$PARAMS" --output none
OUTPUTS=$(az deployment group show --resource-group "$GROUP" --name "$INFRA_DEPLOYMENT" \
  --query properties.outputs --output json)
output() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]]["value"])' "$1" <<<"$OUTPUTS"; }
APP=$(output functionAppName)
STORAGE=$(output storageAccountName)
HOST=$(output hostName)

echo "deploy.sh: 2/3 code ($BLOB)" >&2
if [ "$(az storage blob exists --auth-mode login --account-name "$STORAGE" --container-name deployments \
  --name "$BLOB" --query exists --output tsv)" = true ]; then
  echo "deploy.sh: package $BLOB is already deployed" >&2
else
  # A role assigned a moment ago can take minutes to apply: retry the upload meanwhile.
  for attempt in $(seq 1 "$RETRIES"); do
    if az storage blob upload --auth-mode login --account-name "$STORAGE" --container-name deployments \
      --name "$BLOB" --file "$PACKAGE" --overwrite false --output none; then
      break
    fi
    [ "$attempt" -lt "$RETRIES" ] || fail "cannot upload the package to $STORAGE/deployments: does your account have Storage Blob Data Contributor on $STORAGE? (stage 1 assigns it; it can take a few minutes to apply)"
    echo "deploy.sh: upload refused (role not applied yet?); retrying in ${RETRY_SECS}s" >&2
    sleep "$RETRY_SECS"
  done
  az functionapp restart --resource-group "$GROUP" --name "$APP" --output none
fi
for attempt in $(seq 1 "$RETRIES"); do
  az functionapp function show --resource-group "$GROUP" --name "$APP" \
    --function-name ImportBlobCreated --query name --output tsv >/dev/null 2>&1 && break
  [ "$attempt" -lt "$RETRIES" ] || fail "the functions of $APP did not appear: look at its log stream (az webapp log tail -g $GROUP -n $APP)"
  echo "deploy.sh: waiting for the functions of $APP to load" >&2
  sleep "$RETRY_SECS"
done

echo "deploy.sh: 3/3 Event Grid subscriptions ($EVENTS_DEPLOYMENT)" >&2
az deployment group create --resource-group "$GROUP" --name "$EVENTS_DEPLOYMENT" \
  --template-file "$ROOT/infra/eventgrid.bicep" \
  --parameters storageAccountName="$STORAGE" functionAppName="$APP" --output none

cat <<EOT
Deployed fhir-bulk to $GROUP:
  Function App   $APP (https://$HOST)
  Storage        $STORAGE: drop files into the bundles, ndjson and zip containers
                 (e.g. az storage blob upload --auth-mode login --account-name $STORAGE -c ndjson -f FILE)
  Imports        GET  https://$HOST/imports
  Export         POST https://$HOST/\$alt-export   and   POST https://$HOST/\$alt-export-all
  Status         GET  https://$HOST/\$alt-export-status
The HTTP functions need the function key (?code=KEY or the x-functions-key header):
  az functionapp keys list --resource-group $GROUP --name $APP --query functionKeys.default --output tsv
EOT
