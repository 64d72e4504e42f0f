// geoetl in Azure: one resource group holding everything the Function App needs.
//
//   az deployment group create -g <rg> --template-file infra/main.bicep --parameters @infra/main.parameters.json
//
// docs/deploy.md walks through the whole deployment (publish, first-run migrations, the Postgres
// role of the managed identity, secret rotation) and explains every app setting set below.
// Hand-written resources only (no registry modules), so every property is visible here.

targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

@description('Azure region of every resource (must offer Flex Consumption).')
param location string = resourceGroup().location

@description('Short lowercase name every resource name starts with (letters and digits).')
@minLength(3)
@maxLength(10)
param baseName string = 'geoetl'

@description('Tags put on every resource.')
param tags object = {
  app: 'geoetl'
}

@description('Function App name (globally unique: it is the <name>.azurewebsites.net host).')
param functionAppName string = '${baseName}-func-${uniqueString(resourceGroup().id, baseName)}'

@description('Flex Consumption plan name.')
param planName string = '${baseName}-plan'

@description('User-assigned managed identity of the app (storage, Postgres, Key Vault, telemetry).')
param identityName string = '${baseName}-app-id'

@description('Host storage account: the Functions host state, the queues, the deployment package.')
@minLength(3)
@maxLength(24)
param hostStorageAccountName string = take('${baseName}host${uniqueString(resourceGroup().id, baseName)}', 24)

@description('Data storage account: the bronze and silver containers jobs read and write.')
@minLength(3)
@maxLength(24)
param dataStorageAccountName string = take('${baseName}data${uniqueString(resourceGroup().id, baseName)}', 24)

@description('Redundancy of the host account (host state, queues, package: all rebuilt or transient).')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param hostStorageSku string = 'Standard_ZRS'

@description('Redundancy of the data account (bronze inputs, silver outputs). Geo-redundant by default; use Standard_GRS where GZRS is not offered.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param dataStorageSku string = 'Standard_GZRS'

@description('Input container jobs read by default (BRONZE_CONTAINER, INPUT_CONTAINERS).')
param bronzeContainerName string = 'bronze'

@description('Output container jobs write by default (SILVER_CONTAINER, OUTPUT_CONTAINERS).')
param silverContainerName string = 'silver'

@description('Queue names (JOB_QUEUE, TASK_QUEUE, HIGH_PRIORITY_TASK_QUEUE); each gets a -poison queue too.')
param jobQueueName string = 'geospatial-jobs'
param taskQueueName string = 'geospatial-tasks'
param highPriorityTaskQueueName string = 'geospatial-tasks-high'

@description('Most instances the Function App scales out to. Flex Consumption accepts 40 to 1000 (documented lower bound 40). Every instance may hold DB_POOL_MAX_SIZE Postgres connections.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of one Flex Consumption instance. 4096: one raster conversion (RASTER_TASK_MEMORY_BUDGET_BYTES, 1 GiB) plus the worker baseline, the Functions host and concurrent messages fit, and Flex gives a 4096 MB instance twice the vCPU of a 2048 MB one (GDAL_THREADS 2).')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 4096

@description('Python version of the Functions runtime.')
@allowed([
  '3.11'
])
param pythonVersion string = '3.11'

@description('Key Vault name (3-24 characters, globally unique).')
@minLength(3)
@maxLength(24)
param keyVaultName string = take('${baseName}-kv-${uniqueString(resourceGroup().id, baseName)}', 24)

@description('Log Analytics workspace name.')
param logAnalyticsName string = '${baseName}-logs'

@description('Application Insights name.')
param appInsightsName string = '${baseName}-appi'

@description('Days Log Analytics keeps data.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('PostgreSQL Flexible Server name (globally unique DNS label).')
param postgresServerName string = '${baseName}-pg-${uniqueString(resourceGroup().id, baseName)}'

@description('PostgreSQL major version.')
@allowed([
  '15'
  '16'
])
param postgresVersion string = '16'

@description('Compute SKU of the server. Its default max_connections (table below) sets the app connection budget.')
@allowed([
  'Standard_B1ms'
  'Standard_B2s'
  'Standard_B2ms'
  'Standard_B4ms'
  'Standard_D2ds_v5'
  'Standard_D4ds_v5'
  'Standard_D8ds_v5'
  'Standard_D16ds_v5'
  'Standard_E2ds_v5'
  'Standard_E4ds_v5'
  'Standard_E8ds_v5'
])
param postgresSkuName string = 'Standard_B2s'

@description('Tier of postgresSkuName: Burstable for B*, GeneralPurpose for D*, MemoryOptimized for E*.')
@allowed([
  'Burstable'
  'GeneralPurpose'
  'MemoryOptimized'
])
param postgresSkuTier string = 'Burstable'

@description('Storage of the server in GiB.')
@minValue(32)
param postgresStorageSizeGB int = 32

@description('Days of point-in-time backups.')
@minValue(7)
@maxValue(35)
param postgresBackupRetentionDays int = 7

@description('Geo-redundant backups (not available in every region; cannot be changed after creation).')
param postgresGeoRedundantBackup bool = true

@description('max_connections set on the server; 0 = the SKU default (the table in this file).')
@minValue(0)
param postgresMaxConnections int = 0

@description('Connections kept free for people and tools besides the app: psql, migrations, the portal. Azure reserves 15 more itself.')
@minValue(0)
param postgresAdminReservedConnections int = 10

@description('Largest DB_POOL_MAX_SIZE; the template lowers it to what the budget allows per instance.')
@minValue(1)
param dbPoolMaxSizeCap int = 10

@description('DB_POOL_MIN_SIZE (connections each instance keeps open once its pool exists).')
@minValue(0)
param dbPoolMinSize int = 1

@description('Connect through the server built-in PgBouncer (port 6432, transaction mode). General Purpose / Memory Optimized tiers only.')
param postgresPgBouncer bool = false

@description('PgBouncer max_client_conn: the client connection limit when postgresPgBouncer is true.')
@minValue(1)
param pgBouncerMaxClientConnections int = 5000

@description('PgBouncer default_pool_size: server connections per user/database pair when postgresPgBouncer is true.')
@minValue(1)
param pgBouncerDefaultPoolSize int = 50

@description('How the app authenticates to Postgres: entra (the managed identity token) or password (read from Key Vault).')
@allowed([
  'entra'
  'password'
])
param postgresAuth string = 'entra'

@description('Object id of the Entra user or group that administers the server (runs migrations, creates the app role).')
param postgresEntraAdminObjectId string

@description('Name of that Entra principal (UPN of a user, display name of a group) - the Postgres role name it logs in as.')
param postgresEntraAdminPrincipalName string

@description('Kind of that Entra principal.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param postgresEntraAdminPrincipalType string = 'Group'

@description('postgresAuth = password only: the server admin login created with password authentication.')
param postgresAdminLogin string = 'geoetladmin'

@description('postgresAuth = password only: its password. Leave empty with postgresAuth = entra (password authentication stays disabled).')
@secure()
param postgresAdminPassword string = ''

@description('postgresAuth = password only: the Postgres role the app logs in as (POSTGRES_USER).')
param postgresAppUser string = 'geoetl_app'

@description('postgresAuth = password only: Key Vault secret holding that role password (POSTGRES_PASSWORD_SECRET_NAME). You create the secret; the template never sees it.')
param postgresPasswordSecretName string = 'postgres-app-password'

@description('Database the app uses (POSTGRES_DB).')
param postgresDatabaseName string = 'geoetl'

@description('Schema holding the geoetl tables (POSTGRES_SCHEMA).')
param postgresSchema string = 'geoetl'

@description('Public network access of the server. Disabled needs private access (VNet integration of the app, private endpoint or a delegated subnet, private DNS) which this template does not create.')
@allowed([
  'Enabled'
  'Disabled'
])
param postgresPublicNetworkAccess string = 'Enabled'

@description('Add the 0.0.0.0 rule ("allow Azure services"): needed while the app has no VNet integration, since Flex Consumption outbound addresses are shared and change.')
param postgresAllowAzureServices bool = true

@description('Extra firewall rules, e.g. the address migrations run from: [{ name, startIpAddress, endIpAddress }].')
param postgresFirewallRules array = []

@description('Log level of the app (LOG_LEVEL).')
param logLevel string = 'INFO'

@description('Seconds a Key Vault secret is cached (KEY_VAULT_CACHE_SECONDS): how late a rotated Postgres password is picked up.')
@minValue(0)
param keyVaultCacheSeconds int = 300

// ---------------------------------------------------------------------------------------------
// Variables
// ---------------------------------------------------------------------------------------------

// Built-in role definition ids (the same in every tenant).
var roleIds = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

// Default max_connections of each SKU ("Limits in Azure Database for PostgreSQL flexible server").
var postgresDefaultMaxConnections = {
  Standard_B1ms: 50
  Standard_B2s: 429
  Standard_B2ms: 859
  Standard_B4ms: 1718
  Standard_D2ds_v5: 859
  Standard_D4ds_v5: 1718
  Standard_D8ds_v5: 3437
  Standard_D16ds_v5: 5000
  Standard_E2ds_v5: 1718
  Standard_E4ds_v5: 3437
  Standard_E8ds_v5: 5000
}
// Connections Azure keeps for replication and monitoring out of max_connections.
var postgresAzureReservedConnections = 15
var postgresServerMaxConnections = postgresMaxConnections > 0 ? postgresMaxConnections : postgresDefaultMaxConnections[postgresSkuName]

// The connection budget (docs/deploy.md, "Connection budget"). Direct: every pooled connection is
// a server connection, out of max_connections less Azure's 15 and the admin reserve. PgBouncer:
// the app's connections are PgBouncer clients, out of max_client_conn less the admin reserve
// (people and migrations connect to 5432 directly).
var clientConnectionLimit = postgresPgBouncer ? pgBouncerMaxClientConnections : postgresServerMaxConnections
var reservedConnections = postgresPgBouncer ? postgresAdminReservedConnections : postgresAzureReservedConnections + postgresAdminReservedConnections
var dbPoolMaxSize = min(dbPoolMaxSizeCap, (clientConnectionLimit - reservedConnections) / maximumInstanceCount)

var deploymentContainerName = 'app-package'
var postgresUser = postgresAuth == 'entra' ? managedIdentity.name : postgresAppUser
var queueNames = [
  jobQueueName
  '${jobQueueName}-poison'
  taskQueueName
  '${taskQueueName}-poison'
  highPriorityTaskQueueName
  '${highPriorityTaskQueueName}-poison'
]

// ---------------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------------

resource managedIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
  tags: tags
}

// ---------------------------------------------------------------------------------------------
// Monitoring
// ---------------------------------------------------------------------------------------------

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    // Ingestion only with an Entra token (the app identity, Monitoring Metrics Publisher below).
    DisableLocalAuth: true
  }
}

// ---------------------------------------------------------------------------------------------
// Storage: host account (Functions host, queues, deployment package) and data account
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

// ---------------------------------------------------------------------------------------------
// Key Vault (RBAC): secrets named by *_SECRET_NAME settings (the Postgres password in password mode)
// ---------------------------------------------------------------------------------------------

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  //checkov:skip=CKV_AZURE_109: the app reaches the vault from Flex Consumption shared outbound addresses (no VNet integration), so the firewall allows all; access needs an Entra token and an RBAC role
  //checkov:skip=CKV_AZURE_189: public network access stays enabled for the same reason as CKV_AZURE_109
  name: keyVaultName
  location: location
  tags: tags
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

// ---------------------------------------------------------------------------------------------
// PostgreSQL Flexible Server (Entra authentication)
// ---------------------------------------------------------------------------------------------

resource postgres 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: postgresServerName
  location: location
  tags: tags
  sku: {
    name: postgresSkuName
    tier: postgresSkuTier
  }
  properties: {
    version: postgresVersion
    administratorLogin: postgresAuth == 'password' ? postgresAdminLogin : null
    administratorLoginPassword: postgresAuth == 'password' ? postgresAdminPassword : null
    authConfig: {
      activeDirectoryAuth: 'Enabled'
      passwordAuth: postgresAuth == 'password' ? 'Enabled' : 'Disabled'
      tenantId: subscription().tenantId
    }
    storage: {
      storageSizeGB: postgresStorageSizeGB
      autoGrow: 'Enabled'
    }
    backup: {
      backupRetentionDays: postgresBackupRetentionDays
      geoRedundantBackup: postgresGeoRedundantBackup ? 'Enabled' : 'Disabled'
    }
    network: {
      publicNetworkAccess: postgresPublicNetworkAccess
    }
    highAvailability: {
      mode: 'Disabled'
    }
  }
}

resource postgresEntraAdmin 'Microsoft.DBforPostgreSQL/flexibleServers/administrators@2024-08-01' = {
  parent: postgres
  name: postgresEntraAdminObjectId
  properties: {
    principalName: postgresEntraAdminPrincipalName
    principalType: postgresEntraAdminPrincipalType
    tenantId: subscription().tenantId
  }
}

resource postgresDatabase 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = {
  parent: postgres
  name: postgresDatabaseName
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
  dependsOn: [
    postgresEntraAdmin
  ]
}

// Child resources of the server are created one at a time (dependsOn chain): the server takes one
// change at a time.
resource postgresExtensions 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: postgres
  name: 'azure.extensions'
  properties: {
    value: 'POSTGIS'
    source: 'user-override'
  }
  dependsOn: [
    postgresDatabase
  ]
}

resource postgresMaxConnectionsParameter 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: postgres
  name: 'max_connections'
  properties: {
    value: string(postgresServerMaxConnections)
    source: 'user-override'
  }
  dependsOn: [
    postgresExtensions
  ]
}

resource postgresRequireTls 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: postgres
  name: 'require_secure_transport'
  properties: {
    value: 'ON'
    source: 'user-override'
  }
  dependsOn: [
    postgresMaxConnectionsParameter
  ]
}

resource postgresPgBouncerEnabled 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = if (postgresPgBouncer) {
  parent: postgres
  name: 'pgbouncer.enabled'
  properties: {
    value: 'true'
    source: 'user-override'
  }
  dependsOn: [
    postgresRequireTls
  ]
}

resource postgresPgBouncerMaxClients 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = if (postgresPgBouncer) {
  parent: postgres
  name: 'pgbouncer.max_client_conn'
  properties: {
    value: string(pgBouncerMaxClientConnections)
    source: 'user-override'
  }
  dependsOn: [
    postgresPgBouncerEnabled
  ]
}

resource postgresPgBouncerPoolSize 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = if (postgresPgBouncer) {
  parent: postgres
  name: 'pgbouncer.default_pool_size'
  properties: {
    value: string(pgBouncerDefaultPoolSize)
    source: 'user-override'
  }
  dependsOn: [
    postgresPgBouncerMaxClients
  ]
}

resource postgresAllowAzure 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2024-08-01' = if (postgresAllowAzureServices && postgresPublicNetworkAccess == 'Enabled') {
  parent: postgres
  name: 'AllowAllAzureServicesAndResourcesWithinAzureIps'
  properties: {
    startIpAddress: '0.0.0.0'
    endIpAddress: '0.0.0.0'
  }
  dependsOn: [
    postgresRequireTls
    postgresPgBouncerPoolSize
  ]
}

@batchSize(1)
resource postgresExtraFirewallRules 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2024-08-01' = [for rule in postgresFirewallRules: if (postgresPublicNetworkAccess == 'Enabled') {
  parent: postgres
  name: rule.name
  properties: {
    startIpAddress: rule.startIpAddress
    endIpAddress: rule.endIpAddress
  }
  dependsOn: [
    postgresAllowAzure
  ]
}]

// ---------------------------------------------------------------------------------------------
// Connection budget (fails the deployment when an instance would get no pooled connection)
// ---------------------------------------------------------------------------------------------

module connectionBudget 'modules/connection-budget.bicep' = {
  name: 'geoetl-connection-budget'
  params: {
    clientConnectionLimit: clientConnectionLimit
    reservedConnections: reservedConnections
    maximumInstanceCount: maximumInstanceCount
    dbPoolMaxSize: dbPoolMaxSize
    dbPoolMinSize: dbPoolMinSize
  }
}

// ---------------------------------------------------------------------------------------------
// Role assignments of the app identity: exactly what the code and the Functions host use
// ---------------------------------------------------------------------------------------------

// Host account, blobs: the host's keys, leases and timer state (azure-webjobs-*), the Flex
// deployment package. Owner (not Contributor) is what identity-based AzureWebJobsStorage needs.
resource hostBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, managedIdentity.id, roleIds.storageBlobDataOwner)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataOwner)
    principalId: managedIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Host account, queues: the queue triggers, their -poison queues, the app's own sends.
resource hostQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, managedIdentity.id, roleIds.storageQueueDataContributor)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageQueueDataContributor)
    principalId: managedIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Host account, tables: the app code uses no table, but the Functions host writes its diagnostic
// events to a table in AzureWebJobsStorage; without this role it logs an authorization error for
// each. Scoped to the host account only (which holds nothing but host state and queues).
resource hostTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, managedIdentity.id, roleIds.storageTableDataContributor)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageTableDataContributor)
    principalId: managedIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Data account: jobs read bronze (and GDAL /vsiaz/ with an OAuth token) and write silver.
resource dataBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataStorage.id, managedIdentity.id, roleIds.storageBlobDataContributor)
  scope: dataStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataContributor)
    principalId: managedIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Key Vault: read secret values (POSTGRES_PASSWORD_SECRET_NAME); no list, no write.
resource keyVaultSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, managedIdentity.id, roleIds.keyVaultSecretsUser)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)
    principalId: managedIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Application Insights with local auth disabled: telemetry is sent with the identity's token.
resource appInsightsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, managedIdentity.id, roleIds.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.monitoringMetricsPublisher)
    principalId: managedIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// ---------------------------------------------------------------------------------------------
// Function App on Flex Consumption
// ---------------------------------------------------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  //checkov:skip=CKV_AZURE_225: zone redundancy of Flex Consumption needs always-ready instances (billed while idle); not enabled by default
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

// Every app setting the code reads in Azure (schemas/settings.py; docs/deploy.md has the table),
// applied by functionAppSettings below.
// Not here, on purpose: FUNCTIONS_WORKER_RUNTIME (functionAppConfig.runtime on Flex),
// FUNCTIONS_EXTENSION_VERSION (set by the platform on Flex), WEBSITE_RUN_FROM_PACKAGE (Flex runs
// from functionAppConfig.deployment), and every connection string, key or password.
var appSettings = {
  // Host storage, identity-based (the host reads the __ settings; the code reads accountName).
  AzureWebJobsStorage__accountName: hostStorage.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: managedIdentity.properties.clientId
  // Data storage (bronze/silver), identity-based.
  DATA_STORAGE__accountName: dataStorage.name
  // The user-assigned identity for DefaultAzureCredential (storage, GDAL, Postgres, Key Vault).
  AZURE_CLIENT_ID: managedIdentity.properties.clientId
  INPUT_CONTAINERS: bronzeContainerName
  OUTPUT_CONTAINERS: silverContainerName
  BRONZE_CONTAINER: bronzeContainerName
  SILVER_CONTAINER: silverContainerName
  JOB_QUEUE: jobQueueName
  TASK_QUEUE: taskQueueName
  HIGH_PRIORITY_TASK_QUEUE: highPriorityTaskQueueName
  // Postgres.
  POSTGRES_HOST: postgres.properties.fullyQualifiedDomainName
  POSTGRES_PORT: postgresPgBouncer ? '6432' : '5432'
  POSTGRES_DB: postgresDatabaseName
  POSTGRES_USER: postgresUser
  POSTGRES_SSLMODE: 'require'
  POSTGRES_AUTH: postgresAuth
  POSTGRES_PASSWORD_SECRET_NAME: postgresAuth == 'password' ? postgresPasswordSecretName : ''
  POSTGRES_PGBOUNCER: postgresPgBouncer ? 'true' : 'false'
  POSTGRES_SCHEMA: postgresSchema
  // Connection budget: DB_POOL_MAX_SIZE x APP_MAX_INSTANCES <= POSTGRES_MAX_CONNECTIONS - POSTGRES_RESERVED_CONNECTIONS.
  POSTGRES_MAX_CONNECTIONS: string(connectionBudget.outputs.clientConnectionLimit)
  POSTGRES_RESERVED_CONNECTIONS: string(connectionBudget.outputs.reservedConnections)
  APP_MAX_INSTANCES: string(connectionBudget.outputs.appMaxInstances)
  DB_POOL_MAX_SIZE: string(connectionBudget.outputs.dbPoolMaxSize)
  DB_POOL_MIN_SIZE: string(connectionBudget.outputs.dbPoolMinSize)
  DB_CONNECT_TIMEOUT_SECONDS: '10'
  DB_POOL_TIMEOUT_SECONDS: '30'
  DB_RECONNECT_TIMEOUT_SECONDS: '5'
  DB_HTTP_ACQUIRE_TIMEOUT_SECONDS: '2'
  // Key Vault.
  KEY_VAULT_URL: keyVault.properties.vaultUri
  KEY_VAULT_CACHE_SECONDS: string(keyVaultCacheSeconds)
  // HTTP API limits.
  MAX_REQUEST_BYTES: '262144'
  JOB_LIST_MAX_LIMIT: '200'
  BLOB_LIST_MAX_LIMIT: '1000'
  CONTAINER_LIST_MAX_LIMIT: '100'
  CONTAINER_BLOB_COUNT_CAP: '1000'
  // Task execution.
  TASK_MAX_ATTEMPTS: '3'
  TASK_RETRY_BASE_SECONDS: '1'
  TASK_RETRY_MAX_SECONDS: '60'
  TASK_LEASE_SECONDS: '30'
  INLINE_CHAIN_SECONDS: '60'
  PUBLISH_CONCURRENCY: '16'
  MAX_MESSAGE_DEFERRALS: '20'
  DEFERRAL_MAX_SECONDS: '60'
  CIRCUIT_FAIL_MAX: '5'
  CIRCUIT_RESET_SECONDS: '10'
  // Janitor (timer trigger %JANITOR_SCHEDULE%).
  JANITOR_SCHEDULE: '*/10 * * * * *'
  JANITOR_OUTBOX_GRACE_SECONDS: '30'
  JANITOR_LEASE_GRACE_SECONDS: '5'
  JANITOR_REQUEUE_QUEUED_AFTER_SECONDS: '900'
  JANITOR_STALLED_JOB_AFTER_SECONDS: '120'
  POISON_RETENTION_HOURS: '168'
  // Raster jobs: one 1 GiB conversion at a time per process (instanceMemoryMB 4096).
  RASTER_TASK_MEMORY_BUDGET_BYTES: '1073741824'
  RASTER_WORKER_BASELINE_BYTES: '335544320'
  GDAL_THREADS: '2'
  RASTER_CONVERSIONS_PER_PROCESS: '1'
  MAX_TASKS_PER_STAGE: '10000'
  LOG_LEVEL: logLevel
  // Telemetry, sent with the identity's Entra token (Application Insights local auth is off).
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${managedIdentity.properties.clientId};Authorization=AAD'
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_17: client certificates are not used: HTTP routes use function keys (AuthLevel.FUNCTION); /api/health is anonymous
  //checkov:skip=CKV_AZURE_222: public network access stays enabled: the HTTP API is the app's interface (function keys) and no private endpoint is created here
  //checkov:skip=CKV_AZURE_212: Flex Consumption has no minimum instance count (it scales to zero); always-ready instances would be billed while idle
  //checkov:skip=CKV_AZURE_213: siteConfig.healthCheckPath is not configured (Flex Consumption scales per function and to zero); GET /api/health (anonymous) serves external probes
  name: functionAppName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${managedIdentity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: managedIdentity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
  }
  dependsOn: [
    deploymentContainer
    queues
    bronzeContainer
    silverContainer
    hostBlobOwner
    hostQueueContributor
    hostTableContributor
    dataBlobContributor
    keyVaultSecretsUser
    appInsightsPublisher
  ]
}

// The app settings, as one map (ARM replaces the whole set with it on every deployment).
resource functionAppSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  //checkov:skip=CKV_AZURE_13: false positive: this is the appsettings config resource, and the check reads web-config properties (siteConfig) that it never has
  //checkov:skip=CKV_AZURE_63: false positive: this is the appsettings config resource, and the check reads web-config properties (siteConfig) that it never has
  //checkov:skip=CKV_AZURE_65: false positive: this is the appsettings config resource, and the check reads web-config properties (siteConfig) that it never has
  //checkov:skip=CKV_AZURE_66: false positive: this is the appsettings config resource, and the check reads web-config properties (siteConfig) that it never has
  //checkov:skip=CKV_AZURE_80: false positive: this is the appsettings config resource, and the check reads web-config properties (siteConfig) that it never has
  //checkov:skip=CKV_AZURE_88: false positive: this is the appsettings config resource, and the check reads web-config properties (siteConfig) that it never has
  //checkov:skip=CKV_AZURE_222: false positive: this is the appsettings config resource, and the check reads web-config properties (siteConfig) that it never has
  parent: functionApp
  name: 'appsettings'
  properties: appSettings
}

// ---------------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------------

output apiBaseUrl string = 'https://${functionApp.properties.defaultHostName}/api'
output functionAppName string = functionApp.name
output resourceGroupName string = resourceGroup().name
output identityName string = managedIdentity.name
output identityClientId string = managedIdentity.properties.clientId
output identityPrincipalId string = managedIdentity.properties.principalId
output hostStorageAccountName string = hostStorage.name
output dataStorageAccountName string = dataStorage.name
output postgresServerName string = postgres.name
output postgresHost string = postgres.properties.fullyQualifiedDomainName
output postgresDatabaseName string = postgresDatabase.name
output postgresAppRole string = postgresUser
output keyVaultName string = keyVault.name
output keyVaultUrl string = keyVault.properties.vaultUri
output appInsightsName string = appInsights.name
output logAnalyticsName string = logAnalytics.name
output dbPoolMaxSize int = connectionBudget.outputs.dbPoolMaxSize
output connectionsAtFullScale int = connectionBudget.outputs.connectionsAtFullScale
