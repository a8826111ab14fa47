// fhir-bulk, template 2 of 2 (scripts/deploy.sh stage 3): Event Grid delivers BlobCreated
// events of the input containers to the functions. Deployed after the code, because a subscription to an Azure Function endpoint
// is validated against the function, which exists only once the host has loaded the package.
//
// Each subscription takes only BlobCreated, only from its own container (the subject filter
// ends in /blobs/, so `bundles` does not also match `bundlesprocessed`), and only from the
// APIs that finish a blob (not every appended block). Undeliverable events go to the
// eventgrid-deadletter container, written with the system topic's own identity.

targetScope = 'resourceGroup'

param storageAccountName string
param functionAppName string

@description('Delivery attempts before an event is dead-lettered.')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Minutes an event is retried before it is dead-lettered.')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveMinutes int = 1440

var blobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var subscriptions = [
  { name: 'bundles', container: 'bundles', function: 'ImportBlobCreated' }
  { name: 'ndjson', container: 'ndjson', function: 'ImportBlobCreated' }
  { name: 'zip', container: 'zip', function: 'ImportBlobCreated' }
  { name: 'export-trigger', container: 'export-trigger', function: 'ExportBlobCreated' }
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: 'eventgrid-deadletter'
}

resource app 'Microsoft.Web/sites@2023-12-01' existing = {
  name: functionAppName
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: '${storageAccountName}-blob-events'
  // A system topic lives where its source does (the storage account may not be in the
  // resource group's region).
  location: storage.location
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// The topic's identity writes dead letters, to their container only.
resource deadLetterRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetterContainer.id, topic.id, blobDataContributor)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributor)
    principalId: topic.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource blobCreated 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = [
  for s in subscriptions: {
    parent: topic
    name: s.name
    dependsOn: [
      deadLetterRole
    ]
    properties: {
      eventDeliverySchema: 'EventGridSchema'
      destination: {
        endpointType: 'AzureFunction'
        properties: {
          resourceId: '${app.id}/functions/${s.function}'
          maxEventsPerBatch: 1
          preferredBatchSizeInKilobytes: 64
        }
      }
      filter: {
        includedEventTypes: [
          'Microsoft.Storage.BlobCreated'
        ]
        subjectBeginsWith: '/blobServices/default/containers/${s.container}/blobs/'
        advancedFilters: [
          {
            operatorType: 'StringIn'
            key: 'data.api'
            values: [
              'PutBlob'
              'PutBlockList'
              'FlushWithClose'
              'CopyBlob'
            ]
          }
        ]
      }
      retryPolicy: {
        maxDeliveryAttempts: maxDeliveryAttempts
        eventTimeToLiveInMinutes: eventTimeToLiveMinutes
      }
      deadLetterWithResourceIdentity: {
        identity: {
          type: 'SystemAssigned'
        }
        deadLetterDestination: {
          endpointType: 'StorageBlob'
          properties: {
            resourceId: storage.id
            blobContainerName: deadLetterContainer.name
          }
        }
      }
    }
  }
]

output subscriptions array = [for (s, i) in subscriptions: blobCreated[i].name]
