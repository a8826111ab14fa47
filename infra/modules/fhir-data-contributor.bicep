// FHIR Data Contributor for the function app on an Azure Health Data Services FHIR service
// (which may live in another resource group than the app).

param fhirServiceResourceId string
param principalId string

var segments = split(fhirServiceResourceId, '/')
var fhirDataContributor = '5a1fc7df-4bf1-4951-a576-89034ee01acd'

resource workspace 'Microsoft.HealthcareApis/workspaces@2023-11-01' existing = {
  name: segments[8]
}

resource fhirService 'Microsoft.HealthcareApis/workspaces/fhirservices@2023-11-01' existing = {
  parent: workspace
  name: segments[10]
}

resource assignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(fhirService.id, principalId, fhirDataContributor)
  scope: fhirService
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', fhirDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
