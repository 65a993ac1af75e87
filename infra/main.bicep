// Power BI push functions on Azure: a Flex Consumption function app (Linux, Python 3.11) with a
// user-assigned managed identity used for everything (Power BI tokens, its own storage, the
// deployment package, Application Insights). No account key or connection string anywhere: the
// storage account refuses Shared Key (allowSharedKeyAccess: false).
//
// Deploy with `azd up` (azure.yaml; resource-group scope) or
//   az deployment group create -g <rg> -f infra/main.bicep -p environmentName=<name> ...
// The Event Grid subscriptions that feed the blob triggers are made after the code is deployed
// by infra/scripts/subscribe-events.sh (azd's postdeploy hook): their webhook URLs carry system
// keys (blobs_extension, eventgrid_extension) that the host creates only once the code runs.
// This is how Microsoft's sample does it (Azure-Samples/functions-quickstart-python-azd-eventgrid-blob,
// azure.yaml `hooks.postdeploy` -> scripts/post-up.sh). README "Deploy to Azure" says more.
//
// Templates: Flex Consumption IaC, https://learn.microsoft.com/azure/azure-functions/functions-infrastructure-as-code?pivots=flex-consumption-plan
// and the Microsoft samples above (their AVM modules are written out here as plain resources, so
// that pycep and checkov can read every property; tests/unit/test_infra.py).

targetScope = 'resourceGroup'

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd: AZURE_ENV_NAME); seeds the resource names.')
param environmentName string

@minLength(1)
@description('Region of every resource. It must offer Flex Consumption: az functionapp list-flexconsumption-locations.')
param location string = resourceGroup().location

@description('Power BI cloud (shared/settings.py CLOUDS).')
@allowed(['Public', 'USGov', 'USGovHigh', 'USGovDoD', 'China'])
param powerBiCloud string = 'Public'

@description('Id of the default Power BI workspace (a group id). Leave empty to use powerBiWorkspaceName, or when every caller names its workspace.')
param powerBiWorkspaceId string = ''

@description('Name of the default Power BI workspace, used when powerBiWorkspaceId is empty.')
param powerBiWorkspaceName string = ''

@description('EVENTHOUSE_URI: the Query URI of a Fabric Eventhouse or Azure Data Explorer cluster, for tables a dataset routes there (datasets/<name>.destinations.json). Empty: no Eventhouse. The identity needs the database\'s User and Ingestor roles (or Contributor on the Fabric workspace): README "Moving to Fabric".')
param eventhouseUri string = ''

@description('EVENTHOUSE_DATABASE: the default KQL database.')
param eventhouseDatabase string = ''

@description('ALLOWED_TARGETS: comma-separated workspace/dataset pairs callers may write to. Empty: the default workspace\'s defined datasets.')
param allowedTargets string = ''

@description('BLOB_ALLOWED_HOSTS: storage hosts (account.blob.core.windows.net) blob_created may read. The source account\'s host is added when sourceStorageAccountId is set.')
param blobAllowedHosts string = ''

@description('HTTP_MODE: "sync" pushes before answering, "queue" answers 202 and pushes from the rows queue.')
@allowed(['sync', 'queue'])
param httpMode string = 'sync'

@secure()
@description('FRONTDOOR_KEYS: comma-separated keys callers of the Power BI surface (/api/v1.0/myorg) send as bearer tokens. Empty closes that surface (401).')
param frontdoorKeys string

@secure()
@description('WEBHOOK_SECRET: when not empty, every POST needs X-Signature-256 (HMAC-SHA256 of the body).')
param webhookSecret string

@description('Optional: resource id of ANOTHER storage account whose BlobCreated events feed blob_created. The identity gets Storage Blob Data Reader on it; subscribe-events.sh subscribes to it.')
param sourceStorageAccountId string = ''

// Flex Consumption scale: 2048 or 4096 MB per instance, at most 40 to 1000 instances (the
// allowed values of Microsoft's quickstart template quickstarts/microsoft.web/
// function-app-flex-managed-identities). More instances do not raise Power BI's quotas
// (README "Scaling out"), so the least the plan allows is the default.
@description('Most instances the app scales out to (Flex Consumption maximumInstanceCount).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each instance in MB.')
@allowed([2048, 4096])
param instanceMemoryMB int = 2048

@description('Optional: object id of a person or principal who runs the operator commands (python -m shared replay/doctor) against the storage account; gets the same data roles as the app. azd passes AZURE_PRINCIPAL_ID.')
param operatorPrincipalId string = ''

@description('Kind of operatorPrincipalId.')
@allowed(['User', 'ServicePrincipal', 'Group'])
param operatorPrincipalType string = 'User'

@description('Days Log Analytics keeps logs and telemetry.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

var resourceToken = toLower(uniqueString(resourceGroup().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var appName = 'func-${resourceToken}'
// 3-24 lower-case letters and digits.
var storageAccountName = 'st${resourceToken}'
// Where Flex Consumption keeps the deployed package (functionAppConfig.deployment.storage).
var deploymentContainerName = 'app-package-${take(appName, 32)}'

// The names the app's settings give its storage (shared/settings.py defaults). They are set as
// app settings below from these same variables, so the app and the account cannot disagree.
var rowsQueue = 'rows'
var ingestContainer = 'ingest'
var checkpointContainer = 'ingest-checkpoints'
var deadletterContainer = 'deadletter'
var claimcheckContainer = 'rows-payloads'
var locksContainer = 'powerbi-locks'
var pacingTable = 'powerbipacing'
var blobContainers = [
  deploymentContainerName
  ingestContainer
  checkpointContainer
  deadletterContainer
  claimcheckContainer
  locksContainer
]
// The runtime moves a queue message that failed maxDequeueCount times to <queue>-poison, and a
// blob that failed 5 times to webjobs-blobtrigger-poison (functions-bindings-storage-queue-trigger
// "Poison messages"; functions-bindings-storage-blob-trigger "Poison blobs"). It would create
// them itself; creating them here lets an operator watch them from the first day.
var queues = [
  rowsQueue
  '${rowsQueue}-poison'
  'webjobs-blobtrigger-poison'
]

// Built-in role ids: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  storageAccountContributor: '17d1049b-9a84-46fb-8f53-869881c3d3ab'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}
// What the identity needs on the app's own account. The blob trigger needs Storage Blob Data
// Owner and Storage Queue Data Contributor (its poison queue), and on the AzureWebJobsStorage
// connection also Storage Account Contributor (functions-bindings-storage-blob-trigger, "Grant
// permission to the identity"; functions-reference "Connecting to host storage with an
// identity"); the queue trigger and output binding are covered by Storage Queue Data
// Contributor (functions-bindings-storage-queue, same section); the pacing ledger
// (shared/stores) needs Storage Table Data Contributor. Storage Account Contributor can list
// the account keys, which are useless here: the account refuses Shared Key.
var appStorageRoles = [
  roles.storageBlobDataOwner
  roles.storageQueueDataContributor
  roles.storageTableDataContributor
  roles.storageAccountContributor
]
var operatorStorageRoles = [
  roles.storageBlobDataOwner
  roles.storageQueueDataContributor
  roles.storageTableDataContributor
]

var hasSource = !empty(sourceStorageAccountId)
// /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Storage/storageAccounts/<name>
var sourceParts = split(sourceStorageAccountId, '/')
var sourceHost = hasSource ? '${last(sourceParts)}.blob.${environment().suffixes.storage}' : ''
var allowedHosts = join(filter([blobAllowedHosts, sourceHost], h => !empty(h)), ',')

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${resourceToken}'
  location: location
  tags: tags
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:The Flex Consumption app reaches this account over its public endpoint (no VNet in this template); access is Entra-only (Shared Key off) and role-scoped.
  // checkov:skip=CKV_AZURE_59:Same reason: public network access is needed without a VNet; Shared Key is disabled, so only the roles below grant access.
  // checkov:skip=CKV_AZURE_43:The name is st + uniqueString(): 15 lower-case letters and digits, which checkov cannot evaluate.
  // checkov:skip=CKV_AZURE_206:Locally redundant storage is enough: the account holds transient queues, checkpoints and dead letters that the senders can resend; GRS doubles the cost.
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: { enabled: true, keyType: 'Account' }
        file: { enabled: true, keyType: 'Account' }
        queue: { enabled: true, keyType: 'Account' }
        table: { enabled: true, keyType: 'Account' }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    // Dead letters and checkpoints deleted by mistake can be brought back for a week.
    deleteRetentionPolicy: { enabled: true, days: 7 }
    containerDeleteRetentionPolicy: { enabled: true, days: 7 }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for name in blobContainers: {
    parent: blobService
    name: name
    properties: { publicAccess: 'None' }
  }
]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource storageQueues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [
  for name in queues: {
    parent: queueService
    name: name
  }
]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource pacing 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: pacingTable
}

resource appStorageAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in appStorageRoles: {
    name: guid(storage.id, identity.id, role)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: identity.properties.principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource operatorStorageAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in (empty(operatorPrincipalId) ? [] : operatorStorageRoles): {
    name: guid(storage.id, operatorPrincipalId, role)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: operatorPrincipalId
      principalType: operatorPrincipalType
    }
  }
]

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${resourceToken}'
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: logRetentionDays
  }
}

// Workspace-based, local (instrumentation key) authentication off: telemetry is accepted only
// with an Entra token of an identity holding Monitoring Metrics Publisher on this resource
// ("Microsoft Entra authentication for Application Insights",
// https://learn.microsoft.com/azure/azure-monitor/app/azure-ad-authentication). The host sends it
// with APPLICATIONINSIGHTS_AUTHENTICATION_STRING below ("Enable Microsoft Entra authentication",
// https://learn.microsoft.com/azure/azure-functions/configure-monitoring#enable-microsoft-entra-authentication).
resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true
  }
}

resource insightsAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, identity.id, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Zone redundancy is not offered in every Flex Consumption region, and this template is for any of them.
  name: 'plan-${resourceToken}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true // Linux
  }
}

// Every setting the code reads that this template chooses (tests/unit/test_infra.py compares
// these names with shared/settings.py). Not here, on purpose: FUNCTIONS_WORKER_RUNTIME and
// FUNCTIONS_EXTENSION_VERSION, which Flex Consumption refuses (the runtime is
// functionAppConfig.runtime; https://learn.microsoft.com/azure/azure-functions/functions-app-settings#flex-consumption-plan-deprecations).
var appSettings = {
  // The host's storage, identity-based ("Connecting to host storage with an identity",
  // https://learn.microsoft.com/azure/azure-functions/functions-reference#connecting-to-host-storage-with-an-identity).
  // shared/stores/storage.py reads the same service URIs and client id for its own clients, and
  // the SDK-type blob binding uses the user-assigned identity when __credential and __clientId
  // are both set (azurefunctions-extensions-bindings-blob utils.service_client_factory).
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.properties.clientId
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
  APPLICATIONINSIGHTS_CONNECTION_STRING: insights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.properties.clientId};Authorization=AAD'
  // Power BI: tokens from the user-assigned identity (shared/destinations/auth.py).
  POWERBI_CLOUD: powerBiCloud
  POWERBI_AUTH: 'managed_identity'
  POWERBI_CLIENT_ID: identity.properties.clientId
  POWERBI_WORKSPACE_ID: powerBiWorkspaceId
  POWERBI_WORKSPACE_NAME: powerBiWorkspaceName
  // The second destination (issue 18), with the same user-assigned identity.
  EVENTHOUSE_URI: eventhouseUri
  EVENTHOUSE_DATABASE: eventhouseDatabase
  EVENTHOUSE_AUTH: 'managed_identity'
  EVENTHOUSE_CLIENT_ID: identity.properties.clientId
  ALLOWED_TARGETS: allowedTargets
  // Storage: the account above, through the host's connection.
  STORAGE_CONNECTION: 'AzureWebJobsStorage'
  DEADLETTER_CONNECTION: 'AzureWebJobsStorage'
  DEADLETTER_CONTAINER: deadletterContainer
  ROWS_QUEUE: rowsQueue
  CLAIMCHECK_CONTAINER: claimcheckContainer
  INGEST_CONTAINER: ingestContainer
  CHECKPOINT_CONTAINER: checkpointContainer
  LOCKS_CONTAINER: locksContainer
  PACING: 'shared'
  PACING_TABLE: pacingTable
  // The most processes that may push at once: instances x FUNCTIONS_WORKER_PROCESS_COUNT (1 by
  // default for Python); only used while the pacing table cannot be reached (README "Scaling out").
  PACING_FALLBACK_PROCESSES: string(maximumInstanceCount)
  HTTP_MODE: httpMode
  BLOB_ALLOWED_HOSTS: allowedHosts
  FRONTDOOR_KEYS: frontdoorKeys
  WEBHOOK_SECRET: webhookSecret
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_17:Client certificates do not fit callers that send a function key or a bearer key (README "HTTP endpoints").
  // checkov:skip=CKV_AZURE_222:Public access is the service: senders and Event Grid call it over the internet (no VNet in this template).
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales from zero; always-ready instances would bill around the clock, and queued messages and blob events wait for an instance, none is lost.
  // checkov:skip=CKV_AZURE_213:/api/health needs a function key, which the platform's health-check requests do not send: every instance would be marked unhealthy.
  name: appName
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identity.id}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(appSettings): { name: setting.key, value: setting.value }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
  dependsOn: [
    // The host reads its storage at start: the roles must exist first.
    appStorageAccess
    insightsAccess
    containers
  ]
}

// Basic (user name and password) publishing credentials off: deployments authenticate with
// Entra ID (azd, Azure/functions-action with OIDC).
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'ftp'
  properties: { allow: false }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'scm'
  properties: { allow: false }
}

// The system topic of the app's own account; subscribe-events.sh adds the ingest_blob webhook
// subscription to it once the code (and so the blobs_extension key) exists.
resource storageEvents 'Microsoft.EventGrid/systemTopics@2024-06-01-preview' = {
  name: 'evgt-${resourceToken}'
  location: location
  tags: tags
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// Read access to the other account's blobs, at that account's own scope (its resource group
// may be another one, in another subscription of the tenant).
module sourceAccess 'modules/blob-reader.bicep' = if (hasSource) {
  name: 'source-blob-reader-${resourceToken}'
  // ARM evaluates a module's scope even when its condition is false (Azure/bicep#11463,
  // #2466): with no source account, sourceParts is [''] and [2] would be out of range.
  scope: resourceGroup(hasSource ? sourceParts[2] : subscription().subscriptionId, hasSource ? sourceParts[4] : resourceGroup().name)
  params: {
    storageAccountName: last(sourceParts)
    principalId: identity.properties.principalId
    roleDefinitionId: roles.storageBlobDataReader
  }
}

output AZURE_FUNCTION_APP_NAME string = app.name
output AZURE_FUNCTION_APP_URL string = 'https://${app.properties.defaultHostName}'
output AZURE_RESOURCE_GROUP string = resourceGroup().name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.name
output IDENTITY_PRINCIPAL_ID string = identity.properties.principalId
output IDENTITY_CLIENT_ID string = identity.properties.clientId
output INGEST_CONTAINER string = ingestContainer
output EVENT_GRID_SYSTEM_TOPIC string = storageEvents.name
output SOURCE_STORAGE_ACCOUNT_ID string = sourceStorageAccountId
output APPLICATIONINSIGHTS_NAME string = insights.name
