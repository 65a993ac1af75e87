#!/bin/sh
# Subscribes the function app's blob triggers to Event Grid, after the code is deployed.
#
# The webhook URLs carry the host's system keys (blobs_extension for ingest_blob,
# eventgrid_extension for blob_created), which the host creates only once it has started with
# the code that uses those extensions, so no template can make these subscriptions before the
# first deploy. Microsoft's Event Grid blob sample does the same in an azd postdeploy hook
# (Azure-Samples/functions-quickstart-python-azd-eventgrid-blob, scripts/post-up.sh). Endpoint
# formats: https://learn.microsoft.com/azure/azure-functions/functions-event-grid-blob-trigger
# ("Create the event subscription") and
# https://learn.microsoft.com/azure/azure-functions/functions-bindings-event-grid-trigger
# ("Create a subscription": /runtime/webhooks/eventgrid?functionName=...&code=...).
#
# Run by `azd deploy`/`azd up` (azure.yaml hooks.postdeploy), by the deploy workflow, or by hand
# after `az deployment group create` + a code deploy, with these variables (the template's
# outputs; azd passes its environment to hooks):
#   AZURE_FUNCTION_APP_NAME, AZURE_RESOURCE_GROUP, EVENT_GRID_SYSTEM_TOPIC, INGEST_CONTAINER
#   SOURCE_STORAGE_ACCOUNT_ID   optional: another account whose BlobCreated events feed blob_created
# Idempotent: each run creates or updates the same named subscriptions.
# The keys are secrets: they go into the endpoint URL only, never to the output.
set -eu

if [ -z "${AZURE_FUNCTION_APP_NAME:-}" ] && command -v azd >/dev/null 2>&1; then
  # Outside a hook: read the azd environment's values (KEY="value" lines), only those used here.
  values=$(azd env get-values | grep -E '^(AZURE_FUNCTION_APP_NAME|AZURE_RESOURCE_GROUP|EVENT_GRID_SYSTEM_TOPIC|INGEST_CONTAINER|SOURCE_STORAGE_ACCOUNT_ID)=' || true)
  while IFS='=' read -r name value; do
    [ -n "$name" ] || continue
    value=${value#\"}
    export "$name=${value%\"}"
  done <<VALUES
$values
VALUES
fi

: "${AZURE_FUNCTION_APP_NAME:?set AZURE_FUNCTION_APP_NAME (template output)}"
: "${AZURE_RESOURCE_GROUP:?set AZURE_RESOURCE_GROUP}"
: "${EVENT_GRID_SYSTEM_TOPIC:?set EVENT_GRID_SYSTEM_TOPIC (template output)}"
INGEST_CONTAINER="${INGEST_CONTAINER:-ingest}"
SOURCE_STORAGE_ACCOUNT_ID="${SOURCE_STORAGE_ACCOUNT_ID:-}"

app="$AZURE_FUNCTION_APP_NAME"
group="$AZURE_RESOURCE_GROUP"

# A system key appears once the host has started with the new code; wait for it, at most
# 40 x 15 s = 10 minutes (a Flex Consumption app starts on the first request or event).
system_key() {
  tries=0
  while [ "$tries" -lt 40 ]; do
    key=$(az functionapp keys list --name "$app" --resource-group "$group" \
      --query "systemKeys.$1" --output tsv 2>/dev/null || true)
    if [ -n "$key" ]; then
      printf '%s' "$key"
      return 0
    fi
    tries=$((tries + 1))
    # Wakes the host, which creates the extension keys when it loads the extensions.
    curl --silent --output /dev/null --max-time 30 "https://$host/" || true
    sleep 15
  done
  echo "The $1 system key of $app did not appear in 10 minutes: is the code deployed?" >&2
  return 1
}

host=$(az functionapp show --name "$app" --resource-group "$group" \
  --query defaultHostName --output tsv)

blobs_key=$(system_key blobs_extension)
az eventgrid system-topic event-subscription create \
  --name ingest-blob \
  --resource-group "$group" \
  --system-topic-name "$EVENT_GRID_SYSTEM_TOPIC" \
  --endpoint-type webhook \
  --endpoint "https://$host/runtime/webhooks/blobs?functionName=Host.Functions.ingest_blob&code=$blobs_key" \
  --included-event-types Microsoft.Storage.BlobCreated \
  --subject-begins-with "/blobServices/default/containers/$INGEST_CONTAINER/blobs/" \
  --output none
echo "ingest_blob: subscribed to BlobCreated in container $INGEST_CONTAINER"

if [ -n "$SOURCE_STORAGE_ACCOUNT_ID" ]; then
  eventgrid_key=$(system_key eventgrid_extension)
  # Only the APIs that mean a blob is complete (shared/sources/blob_events.py COMPLETE_APIS):
  # the others would be answered and ignored anyway, at the cost of an invocation each.
  az eventgrid event-subscription create \
    --name "blob-created-$app" \
    --source-resource-id "$SOURCE_STORAGE_ACCOUNT_ID" \
    --endpoint-type webhook \
    --endpoint "https://$host/runtime/webhooks/eventgrid?functionName=blob_created&code=$eventgrid_key" \
    --included-event-types Microsoft.Storage.BlobCreated \
    --advanced-filter data.api StringIn PutBlob PutBlockList CopyBlob FlushWithClose \
    --output none
  echo "blob_created: subscribed to BlobCreated of ${SOURCE_STORAGE_ACCOUNT_ID##*/}"
fi
