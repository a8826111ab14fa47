// fhir-bulk, template 1 of 2 (scripts/deploy.sh stage 1): everything but the Event Grid
// subscriptions (infra/eventgrid.bicep, deployed once the functions exist). scripts/deploy.sh
// deploys both, the package in between; re-running it with the same inputs changes nothing.
//
// Hosting: Elastic Premium (EP1) on Linux. It runs custom handlers with a documented
// configuration (FUNCTIONS_WORKER_RUNTIME=custom), has no cold start (one always-ready
// instance), no 10-minute execution limit (host.json allows 2 h for a large file), VNet
// integration, and runs from a package in Blob Storage read with the app's managed identity,
// so the storage account needs no shared key and no Azure Files content share. Flex
// Consumption would scale to zero, but its runtime setting for custom handlers is not
// documented yet; Linux Consumption retires in 2028.

targetScope = 'resourceGroup'

@description('Prefix of every resource name: 3-11 lowercase letters and digits, starting with a letter (Key Vault names must).')
@minLength(3)
@maxLength(11)
param prefix string

param location string = resourceGroup().location

@description('FHIR R4 base URL, e.g. https://ws-fhir.fhir.azurehealthcareapis.com')
param fhirUrl string

@description('Token audience of the FHIR server; empty: the origin of fhirUrl.')
param fhirAudience string = ''

@description('How the app authenticates to the FHIR server.')
@allowed([
  'managed-identity'
  'client-secret'
  'none'
])
param fhirAuth string = 'managed-identity'

@description('client-secret only: tenant and application (client) id of the service principal.')
param fhirTenantId string = ''
param fhirClientId string = ''

@description('client-secret only: stored in Key Vault (when given; empty keeps the stored one); the app reads it through a Key Vault reference.')
@secure()
param fhirClientSecret string = ''

@description('Resource id of an Azure Health Data Services FHIR service: the app gets FHIR Data Contributor on it. Empty for other servers.')
param fhirServiceResourceId string = ''

@description('The package blob the app runs (fhir-bulk-<sha256>.zip in the deployments container). scripts/deploy.sh passes the one running now and switches to a new one only after uploading it; empty (first deployment): no package yet.')
param packageBlobName string = ''

@description('Object id of the principal running the deployment: it may upload packages to the deployments container (and nothing else). Empty: no role.')
param deployerObjectId string = ''

@allowed([
  'User'
  'ServicePrincipal'
])
param deployerPrincipalType string = 'User'

@description('Storage redundancy; zone-redundant by default (use Standard_GRS or Standard_LRS where ZRS is not offered).')
@allowed([
  'Standard_ZRS'
  'Standard_GZRS'
  'Standard_GRS'
  'Standard_LRS'
])
param storageSku string = 'Standard_ZRS'

@description('Most instances the app scales out to.')
@minValue(1)
@maxValue(100)
param maxInstances int = 10

var suffix = uniqueString(resourceGroup().id, prefix)
var storageName = take('${prefix}st${suffix}', 24)
var appName = '${prefix}-func-${suffix}'
var vaultName = take('${prefix}-kv-${suffix}', 24)
var exportTrigger = 'export-trigger'
var containers = [
  'bundles'
  'bundlesprocessed'
  'bundleserr'
  'ndjson'
  'ndjsonprocessed'
  'ndjsonerr'
  'zip'
  'zipprocessed'
  'ziperr'
  'export'
  exportTrigger
  '${exportTrigger}-processed'
  '${exportTrigger}-err'
  'reports'
  'eventgrid-deadletter'
]
// Packages the app runs from; the only container a deployer may write (see deployerPackageRole).
var packageContainerName = 'deployments'
var importQueue = 'import-work'
var exportQueue = 'export-work'
var tables = [
  'imports'
  'importerrors'
  'exports'
]
var audience = empty(fhirAudience) ? 'https://${split(split(fhirUrl, '://')[1], '/')[0]}' : fhirAudience
var useSecret = fhirAuth == 'client-secret'
var writeSecret = useSecret && !empty(fhirClientSecret)
var secretName = 'fhir-client-secret'
var roles = {
  blobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  blobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  queueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  tableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: no VNet here: the Functions host, Event Grid and uploaders reach storage over its public endpoint, with Entra ID only (shared keys are off)
  // checkov:skip=CKV_AZURE_59: same reason; anonymous blob access is off (allowBlobPublicAccess)
  // checkov:skip=CKV_AZURE_206: replication is the storageSku parameter, zone-redundant by default; checkov does not resolve parameters
  // checkov:skip=CKV_AZURE_43: the name is computed (prefix + uniqueString, at most 24 lowercase characters), which checkov cannot evaluate
  name: storageName
  location: location
  kind: 'StorageV2'
  sku: {
    name: storageSku
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled'
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource blobContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for c in containers: {
    parent: blobService
    name: c
    properties: {
      publicAccess: 'None'
    }
  }
]

resource packageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: packageContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource workQueues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [
  for q in [importQueue, exportQueue]: {
    parent: queueService
    name: q
  }
]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource stateTables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [
  for t in tables: {
    parent: tableService
    name: t
  }
]

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${prefix}-logs-${suffix}'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${prefix}-ai-${suffix}'
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
  }
}

// The operations dashboard: Application Insights > Workbooks > "fhir-bulk operations". Its
// queries read only the log events and fields handler/telemetry.rs declares (tested).
resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, prefix, 'fhir-bulk-operations')
  location: location
  kind: 'shared'
  properties: {
    displayName: 'fhir-bulk operations (${prefix})'
    category: 'workbook'
    sourceId: insights.id
    serializedData: loadTextContent('workbook.json')
  }
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: the app resolves its Key Vault reference over the public endpoint (no VNet); access is Entra ID RBAC only
  // checkov:skip=CKV_AZURE_189: same reason
  name: vaultName
  location: location
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

// Written only when a secret is given (first deployment, or a rotation): re-running the
// deployment without one leaves the stored secret, and its version, as they are.
resource clientSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (writeSecret) {
  // checkov:skip=CKV_AZURE_41: the secret is the service principal's credential, which carries its own expiry; rotate it by re-running scripts/deploy.sh with FHIRBULK_FHIR_CLIENT_SECRET
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov does not read conditional (if) resources
  parent: vault
  name: secretName
  properties: {
    value: fhirClientSecret
    contentType: 'FHIR service principal client secret'
  }
}

resource plan 'Microsoft.Web/serverfarms@2023-12-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy on Elastic Premium means three always-ready instances; an import or export survives an instance loss anyway (queued, checkpointed work)
  name: '${prefix}-plan-${suffix}'
  location: location
  kind: 'elastic'
  sku: {
    name: 'EP1'
    tier: 'ElasticPremium'
  }
  properties: {
    reserved: true
    maximumElasticWorkerCount: maxInstances
  }
}

var baseSettings = [
  { name: 'FUNCTIONS_EXTENSION_VERSION', value: '~4' }
  { name: 'FUNCTIONS_WORKER_RUNTIME', value: 'custom' }
  { name: 'AzureWebJobsStorage__accountName', value: storage.name }
  { name: 'WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID', value: 'SystemAssigned' }
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: insights.properties.ConnectionString }
  { name: 'FHIRBULK_STORAGE_ACCOUNT', value: storage.name }
  { name: 'FHIRBULK_STORAGE__queueServiceUri', value: storage.properties.primaryEndpoints.queue }
  { name: 'FHIRBULK_IMPORT_QUEUE', value: importQueue }
  { name: 'FHIRBULK_EXPORT_QUEUE', value: exportQueue }
  { name: 'FHIRBULK_FHIR_URL', value: fhirUrl }
  { name: 'FHIRBULK_FHIR_AUDIENCE', value: audience }
  { name: 'FHIRBULK_FHIR_AUTH', value: fhirAuth }
]
var packageSettings = empty(packageBlobName) ? [] : [
  { name: 'WEBSITE_RUN_FROM_PACKAGE', value: '${storage.properties.primaryEndpoints.blob}${packageContainerName}/${packageBlobName}' }
]
var secretSettings = useSecret ? [
      { name: 'FHIRBULK_FHIR_TENANT_ID', value: fhirTenantId }
      { name: 'FHIRBULK_FHIR_CLIENT_ID', value: fhirClientId }
      { name: 'FHIRBULK_FHIR_CLIENT_SECRET', value: '@Microsoft.KeyVault(VaultName=${vault.name};SecretName=${secretName})' }
    ] : []

resource app 'Microsoft.Web/sites@2023-12-01' = {
  // checkov:skip=CKV_AZURE_222: Event Grid delivers to the functions and users call the HTTP functions over the internet, with function keys
  // checkov:skip=CKV_AZURE_17: client certificates would refuse Event Grid's deliveries
  // checkov:skip=CKV_AZURE_212: one always-ready instance; the plan scales out on demand and work survives an instance loss (queued, checkpointed)
  // checkov:skip=CKV_AZURE_213: the custom handler's /health is not exposed through the Functions host; the host itself is monitored by the platform
  name: appName
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    reserved: true
    httpsOnly: true
    clientCertMode: 'Optional'
    keyVaultReferenceIdentity: 'SystemAssigned'
    siteConfig: {
      linuxFxVersion: ''
      ftpsState: 'Disabled'
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      minimumElasticInstanceCount: 1
      functionAppScaleLimit: maxInstances
      appSettings: concat(baseSettings, packageSettings, secretSettings)
    }
  }
}

// The app's identity: host storage (blob owner), work queues, state tables, the secret.
var storageRoles = [
  roles.blobDataOwner
  roles.queueDataContributor
  roles.tableDataContributor
]

resource appStorageRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in storageRoles: {
    name: guid(storage.id, app.id, role)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: app.identity.principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource appSecretsRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, app.id, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// The deployer may write packages, and nothing else: not the data, not the host's keys
// (azure-webjobs-secrets), which Blob Data Contributor on the account would give.
resource deployerPackageRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerObjectId)) {
  name: guid(packageContainer.id, deployerObjectId, roles.blobDataContributor)
  scope: packageContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.blobDataContributor)
    principalId: deployerObjectId
    principalType: deployerPrincipalType
  }
}

// ARM evaluates a conditional module's scope even when the condition is false
// (Azure/bicep#11463): without a FHIR service id, the scope is this resource group.
var fhirServiceScopeId = empty(fhirServiceResourceId) ? resourceGroup().id : fhirServiceResourceId
var fhirServiceScope = split(fhirServiceScopeId, '/')

module fhirRole 'modules/fhir-data-contributor.bicep' = if (!empty(fhirServiceResourceId)) {
  name: 'fhir-data-contributor'
  scope: resourceGroup(fhirServiceScope[2], fhirServiceScope[4])
  params: {
    fhirServiceResourceId: fhirServiceResourceId
    principalId: app.identity.principalId
  }
}

output functionAppName string = app.name
output storageAccountName string = storage.name
output hostName string = app.properties.defaultHostName
output keyVaultName string = vault.name
output functionAppId string = app.id
output insightsName string = insights.name
output workbookId string = workbook.id
output packageContainerUrl string = '${storage.properties.primaryEndpoints.blob}${packageContainerName}/'
