#!/usr/bin/env bash
# Deploys fhir-bulk into an Azure subscription in three stages:
#   1. infra   infra/main.bicep: storage, Key Vault, monitoring (with the operations workbook),
#              the Elastic Premium plan and the Function App with its identity and roles; the
#              app keeps running the package it runs now;
#   2. code    the package (scripts/package.sh) uploaded to the `deployments` container under a
#              name made from its SHA-256 (skipped when already there), and only then the app
#              switched to it (WEBSITE_RUN_FROM_PACKAGE), so a restart never finds its package
#              missing; Key Vault references refreshed when a secret was written; the triggers
#              synchronised (always: the app runs from an external package), and every function
#              Event Grid delivers to waited for;
#   3. events  infra/eventgrid.bicep: Event Grid subscriptions from the input containers to
#              the functions (they need the functions to exist, hence last).
# Re-running it with the same inputs changes nothing that is already right. --what-if shows
# what stages 1 and 3 would change, builds nothing and changes nothing.
#
# The deployer's object id (who may upload packages) comes from the signed-in token, which
# works for users, service principals and managed identities without Microsoft Graph
# permissions; --deployer-object-id overrides it.
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
PACKAGE_COMMAND=${DEPLOY_PACKAGE_COMMAND:-$ROOT/scripts/package.sh}

usage() {
  cat <<'EOT'
Usage: scripts/deploy.sh --subscription ID --resource-group NAME --prefix PREFIX --fhir-url URL
                         [--location LOCATION] [--audience AUDIENCE]
                         [--auth managed-identity|service-principal|none]
                         [--tenant-id ID --client-id ID] [--fhir-service-id RESOURCE_ID]
                         [--deployer-object-id ID] [--package ZIP] [--what-if]

  --subscription      subscription id or name
  --resource-group    resource group (created in --location if it does not exist)
  --location          Azure region, e.g. westeurope (default: the group's)
  --prefix            3-11 lowercase letters and digits starting with a letter: the start
                      of every resource name
  --fhir-url          FHIR R4 base URL the app loads into and exports from
  --audience          token audience of the FHIR server (default: origin of --fhir-url)
  --auth              how the app signs in to the FHIR server (default managed-identity);
                      service-principal needs --tenant-id, --client-id and, on the first
                      deployment, FHIRBULK_FHIR_CLIENT_SECRET in the environment
  --fhir-service-id   resource id of an Azure Health Data Services FHIR service: the app gets
                      FHIR Data Contributor on it
  --deployer-object-id  object id of who runs this, given Storage Blob Data Contributor on
                      the deployments container (default: the oid of the signed-in token)
  --package           the zip to deploy (default: built now by scripts/package.sh)
  --what-if           show what the infrastructure and Event Grid deployments would change;
                      build nothing, change nothing
EOT
}

fail() {
  echo "deploy.sh: $*" >&2
  exit 1
}

SUBSCRIPTION='' GROUP='' LOCATION='' PREFIX='' FHIR_URL='' AUDIENCE='' AUTH=managed-identity
TENANT_ID='' CLIENT_ID='' FHIR_SERVICE_ID='' PACKAGE='' WHAT_IF=false DEPLOYER_ID=
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
    --deployer-object-id) DEPLOYER_ID=${2:-} ;;
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
if [ -n "$DEPLOYER_ID" ]; then
  [[ "$DEPLOYER_ID" =~ ^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$ ]] ||
    fail "--deployer-object-id '$DEPLOYER_ID' is not an object id (a GUID)"
fi
if [ -n "$FHIR_SERVICE_ID" ]; then
  [[ "$FHIR_SERVICE_ID" =~ ^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.HealthcareApis/workspaces/[^/]+/fhirservices/[^/]+$ ]] ||
    fail "--fhir-service-id must be a FHIR service id: /subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.HealthcareApis/workspaces/<workspace>/fhirservices/<name>"
fi

# Prerequisites, each with what to do when it is missing.
command -v az >/dev/null 2>&1 || fail "the Azure CLI (az) is not installed: see https://learn.microsoft.com/cli/azure/install-azure-cli"
az account show --output none 2>/dev/null || fail "az is not logged in: run 'az login' (or 'az login --service-principal ...' in a pipeline)"
az bicep version --output none 2>/dev/null || fail "az cannot compile Bicep: run 'az bicep install'"

if [ -z "$PACKAGE" ] && ! $WHAT_IF; then
  echo "deploy.sh: building the package ($PACKAGE_COMMAND)" >&2
  PACKAGE=$("$PACKAGE_COMMAND")
fi
if [ -n "$PACKAGE" ]; then
  [ -f "$PACKAGE" ] || fail "package '$PACKAGE' does not exist: build it with scripts/package.sh"
  SHA=$(sha256sum "$PACKAGE" | cut -c1-64)
  BLOB="fhir-bulk-${SHA:0:16}.zip"
else
  BLOB='' # --what-if without --package: nothing is built
fi

az account set --subscription "$SUBSCRIPTION"

# Who deploys (they may upload packages): the object id and kind of the signed-in principal,
# from its token, which needs no directory (Graph) permission and also works under
# `az login --identity`. The token goes through a pipe, never an argument or the output.
DEPLOYER_TYPE=User
if [ -z "$DEPLOYER_ID" ]; then
  read -r DEPLOYER_ID DEPLOYER_TYPE < <(az account get-access-token --query accessToken --output tsv |
    python3 -c '
import base64, json, sys
payload = sys.stdin.read().strip().split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
print(claims.get("oid", ""), "User" if claims.get("idtyp", "user") == "user" else "ServicePrincipal")
') || true
  [ -n "$DEPLOYER_ID" ] || fail "cannot read your object id from your Azure token: give it with --deployer-object-id"
elif [ "$(az account show --query user.type --output tsv)" != user ]; then
  DEPLOYER_TYPE=ServicePrincipal
fi

if [ "$(az group exists --name "$GROUP")" != true ]; then
  [ -n "$LOCATION" ] || fail "resource group '$GROUP' does not exist: give --location to create it"
  if $WHAT_IF; then
    echo "deploy.sh: what-if: resource group '$GROUP' does not exist; a deployment would create it in $LOCATION with everything in infra/main.bicep, then infra/eventgrid.bicep"
    exit 0
  fi
  az group create --name "$GROUP" --location "$LOCATION" --output none
fi

# The package the app runs now (none before the first deployment): stage 1 keeps it, and the
# switch to the new one comes after its upload.
# Read through the REST API: the CLI's own settings commands may redact values.
APP_ID=$(az functionapp list --resource-group "$GROUP" --query "[?starts_with(name, '$PREFIX-func-')].id | [0]" --output tsv)
APP=${APP_ID##*/}
RUNNING=''
if [ -n "$APP_ID" ]; then
  RUNNING=$(az rest --method post --url "https://management.azure.com$APP_ID/config/appsettings/list?api-version=2022-03-01" \
    --query properties.WEBSITE_RUN_FROM_PACKAGE --output tsv)
  RUNNING=${RUNNING##*/}
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PARAMS="$WORK/main.parameters.json"
(
  umask 077
  P_PREFIX=$PREFIX P_FHIR_URL=$FHIR_URL P_AUDIENCE=$AUDIENCE P_AUTH=$FHIR_AUTH \
    P_TENANT=$TENANT_ID P_CLIENT=$CLIENT_ID P_FHIR_SERVICE=$FHIR_SERVICE_ID P_BLOB=$RUNNING \
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
WRITES_SECRET=false
if [ "$FHIR_AUTH" = client-secret ] && [ -n "${FHIRBULK_FHIR_CLIENT_SECRET:-}" ]; then WRITES_SECRET=true; fi

# The functions Event Grid delivers to (stage 3 needs each of them to exist).
mapfile -t EVENT_FUNCTIONS < <(grep -o "function: '[A-Za-z]*'" "$ROOT/infra/eventgrid.bicep" | cut -d"'" -f2 | sort -u)

output() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]]["value"])' "$1" <<<"$OUTPUTS"; }

if $WHAT_IF; then
  az deployment group what-if --resource-group "$GROUP" --name "$INFRA_DEPLOYMENT" \
    --template-file "$ROOT/infra/main.bicep" --parameters "@$PARAMS"
  if [ -n "$APP" ]; then
    OUTPUTS=$(az deployment group show --resource-group "$GROUP" --name "$INFRA_DEPLOYMENT" \
      --query properties.outputs --output json)
    az deployment group what-if --resource-group "$GROUP" --name "$EVENTS_DEPLOYMENT" \
      --template-file "$ROOT/infra/eventgrid.bicep" \
      --parameters storageAccountName="$(output storageAccountName)" functionAppName="$APP"
  else
    echo "deploy.sh: what-if: infra/eventgrid.bicep would be deployed once the functions exist"
  fi
  if [ -z "$BLOB" ]; then
    echo "deploy.sh: what-if: the package would be built (scripts/package.sh) and the app switched to it; give --package to compare a built one"
  elif [ "$BLOB" = "$RUNNING" ]; then
    echo "deploy.sh: what-if: the app runs $BLOB already"
  else
    echo "deploy.sh: what-if: $BLOB would be uploaded unless it is there, and the app switched to it from ${RUNNING:-no package}"
  fi
  exit 0
fi

echo "deploy.sh: 1/3 infrastructure ($INFRA_DEPLOYMENT)" >&2
az deployment group create --resource-group "$GROUP" --name "$INFRA_DEPLOYMENT" \
  --template-file "$ROOT/infra/main.bicep" --parameters "@$PARAMS" --output none
OUTPUTS=$(az deployment group show --resource-group "$GROUP" --name "$INFRA_DEPLOYMENT" \
  --query properties.outputs --output json)
APP=$(output functionAppName)
APP_ID=$(output functionAppId)
STORAGE=$(output storageAccountName)
HOST=$(output hostName)
INSIGHTS=$(output insightsName)
PACKAGES=$(output packageContainerUrl)
LOGS_HINT="look at its logs in Application Insights: az monitor app-insights query --resource-group $GROUP --app $INSIGHTS --analytics-query \"union traces, exceptions | where timestamp > ago(30m) | where severityLevel >= 2 or itemType == 'exception' | project timestamp, severityLevel, message, outerMessage | order by timestamp desc | take 50\" (az extension add --name application-insights, once)"

echo "deploy.sh: 2/3 code ($BLOB)" >&2
if [ "$(az storage blob exists --auth-mode login --account-name "$STORAGE" --container-name deployments \
  --name "$BLOB" --query exists --output tsv)" = true ]; then
  echo "deploy.sh: package $BLOB is already uploaded" >&2
else
  # A role assigned a moment ago can take minutes to apply: retry the upload meanwhile.
  for attempt in $(seq 1 "$RETRIES"); do
    if az storage blob upload --auth-mode login --account-name "$STORAGE" --container-name deployments \
      --name "$BLOB" --file "$PACKAGE" --overwrite false --output none; then
      break
    fi
    [ "$attempt" -lt "$RETRIES" ] || fail "cannot upload the package to $STORAGE/deployments: does your account have Storage Blob Data Contributor on that container? (stage 1 assigns it to $DEPLOYER_ID; it can take a few minutes to apply)"
    echo "deploy.sh: upload refused (role not applied yet?); retrying in ${RETRY_SECS}s" >&2
    sleep "$RETRY_SECS"
  done
fi
if [ "$RUNNING" = "$BLOB" ]; then
  echo "deploy.sh: package $BLOB is already deployed" >&2
else
  echo "deploy.sh: switching $APP to $BLOB (from ${RUNNING:-no package})" >&2
  az functionapp config appsettings set --resource-group "$GROUP" --name "$APP" \
    --settings "WEBSITE_RUN_FROM_PACKAGE=$PACKAGES$BLOB" --output none
fi
if $WRITES_SECRET; then
  # Key Vault references are cached for up to a day: read the new secret now.
  az rest --method post --url "https://management.azure.com$APP_ID/config/configreferences/appsettings/refresh?api-version=2022-03-01" --output none
fi
# Running from an external package, the triggers must be synchronised after every deployment.
az rest --method post --url "https://management.azure.com$APP_ID/syncfunctiontriggers?api-version=2022-03-01" --output none
restarted=false
for attempt in $(seq 1 "$RETRIES"); do
  loaded=$(az functionapp function list --resource-group "$GROUP" --name "$APP" --query "[].name" --output tsv 2>/dev/null || true)
  missing=()
  for f in "${EVENT_FUNCTIONS[@]}"; do
    grep -qx "$APP/$f" <<<"$loaded" || missing+=("$f")
  done
  [ ${#missing[@]} -gt 0 ] || break
  [ "$attempt" -lt "$RETRIES" ] || fail "the functions ${missing[*]} of $APP did not appear: $LOGS_HINT"
  if ! $restarted && [ "$attempt" -ge $((RETRIES / 2)) ]; then
    echo "deploy.sh: ${missing[*]} still missing: restarting $APP once" >&2
    az functionapp restart --resource-group "$GROUP" --name "$APP" --output none
    restarted=true
  else
    echo "deploy.sh: waiting for ${missing[*]} of $APP to load" >&2
  fi
  sleep "$RETRY_SECS"
done

echo "deploy.sh: 3/3 Event Grid subscriptions ($EVENTS_DEPLOYMENT)" >&2
az deployment group create --resource-group "$GROUP" --name "$EVENTS_DEPLOYMENT" \
  --template-file "$ROOT/infra/eventgrid.bicep" \
  --parameters storageAccountName="$STORAGE" functionAppName="$APP" --output none

cat <<EOT
Deployed fhir-bulk to $GROUP:
  Function App   $APP (https://$HOST), running $BLOB
  Storage        $STORAGE: drop files into the bundles, ndjson and zip containers
                 (e.g. az storage blob upload --auth-mode login --account-name $STORAGE -c ndjson -f FILE;
                 an uploader needs Storage Blob Data Contributor on the containers it writes)
  Imports        GET  https://$HOST/imports
  Export         POST https://$HOST/\$alt-export   and   POST https://$HOST/\$alt-export-all
  Status         GET  https://$HOST/\$alt-export-status
  Dashboard      the "fhir-bulk operations" workbook of $INSIGHTS (Application Insights > Workbooks)
  Logs           az monitor app-insights query --resource-group $GROUP --app $INSIGHTS --analytics-query "traces | order by timestamp desc | take 50"
The HTTP functions need the function key (?code=KEY or the x-functions-key header):
  az functionapp keys list --resource-group $GROUP --name $APP --query functionKeys.default --output tsv
EOT
