// A role on another storage account, at that account's own scope: main.bicep deploys this module
// into the account's resource group (which may be in another subscription of the tenant), so that
// blob_created can read the blobs whose BlobCreated events it receives.

targetScope = 'resourceGroup'

@description('Name of the storage account, in this resource group.')
param storageAccountName string

@description('Object (principal) id of the identity that reads the blobs.')
param principalId string

@description('Role definition id (a GUID); Storage Blob Data Reader.')
param roleDefinitionId string

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource reader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, roleDefinitionId)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitionId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
