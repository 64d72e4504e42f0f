// Storage: the host account (Functions host state, the queues, the Flex deployment package) and the
// data account (the bronze and silver containers jobs read and write). Both refuse shared keys.
//
// Parameters keep main.bicep's names; they are described and validated there.

param location string
param tags object
param hostStorageAccountName string
param dataStorageAccountName string
param hostStorageSku string
param dataStorageSku string
param bronzeContainerName string
param silverContainerName string
param jobQueueName string
param taskQueueName string
param highPriorityTaskQueueName string
param webhookQueueName string

var deploymentContainerName = 'app-package'
var queueNames = [
  jobQueueName
  '${jobQueueName}-poison'
  taskQueueName
  '${taskQueueName}-poison'
  highPriorityTaskQueueName
  '${highPriorityTaskQueueName}-poison'
  webhookQueueName
  '${webhookQueueName}-poison'
]

// ---------------------------------------------------------------------------------------------
// Host account
// ---------------------------------------------------------------------------------------------

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35: the Flex Consumption app has no VNet integration here; its outbound addresses are shared, so the firewall stays open and access is by Entra identity only (shared keys disabled)
  //checkov:skip=CKV_AZURE_59: as CKV_AZURE_35 - public endpoint, Entra-only access; private endpoints need the VNet integration this template does not create
  //checkov:skip=CKV_AZURE_206: zone-redundant (hostStorageSku, default Standard_ZRS) rather than geo-redundant: the account holds transient host state and queues and a package republished from source
  //checkov:skip=CKV_AZURE_43: the name is a parameter (default: baseName + uniqueString, lowercase, at most 24 characters); the check cannot evaluate it
  name: hostStorageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: hostStorageSku
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    publicNetworkAccess: 'Enabled'
    supportsHttpsTrafficOnly: true
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource hostBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: hostStorage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: hostBlobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource hostQueueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: hostStorage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queueName in queueNames: {
  parent: hostQueueService
  name: queueName
}]

// ---------------------------------------------------------------------------------------------
// Data account
// ---------------------------------------------------------------------------------------------

resource dataStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35: as on the host account - no VNet integration, so the firewall stays open and access is by Entra identity only (shared keys disabled)
  //checkov:skip=CKV_AZURE_59: as CKV_AZURE_35 - public endpoint, Entra-only access
  //checkov:skip=CKV_AZURE_206: redundancy is the parameter dataStorageSku, default Standard_GZRS (geo-redundant); the check cannot evaluate parameters
  //checkov:skip=CKV_AZURE_43: the name is a parameter (default: baseName + uniqueString, lowercase, at most 24 characters); the check cannot evaluate it
  name: dataStorageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: dataStorageSku
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    publicNetworkAccess: 'Enabled'
    supportsHttpsTrafficOnly: true
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource dataBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: dataStorage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource bronzeContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: dataBlobService
  name: bronzeContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource silverContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: dataBlobService
  name: silverContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Module outputs wait for every resource above: a module that reads one (function-app.bicep,
// identity.bicep) deploys after the containers and queues exist.
output hostStorageAccountName string = hostStorage.name
output hostBlobEndpoint string = hostStorage.properties.primaryEndpoints.blob
output deploymentContainerName string = deploymentContainerName
output dataStorageAccountName string = dataStorage.name
