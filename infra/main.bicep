// geoetl in Azure: one resource group holding everything the Function App needs.
//
//   az deployment group create -g <rg> --template-file infra/main.bicep --parameters @infra/main.parameters.json
//
// docs/deploy.md walks through the whole deployment (publish, first-run migrations, the Postgres
// role of the managed identity, secret rotation) and explains every app setting.
// Hand-written resources only (no registry modules): this file takes the parameters and wires the
// modules in modules/, one per concern, each resource with all its properties there.

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

@description('Queue names (JOB_QUEUE, TASK_QUEUE, HIGH_PRIORITY_TASK_QUEUE, WEBHOOK_QUEUE); each gets a -poison queue too.')
param jobQueueName string = 'geospatial-jobs'
param taskQueueName string = 'geospatial-tasks'
param highPriorityTaskQueueName string = 'geospatial-tasks-high'
param webhookQueueName string = 'geospatial-webhooks'

@description('Key Vault secret (whsec_ + base64) that signs job-completion webhooks (WEBHOOK_SECRET_NAME); empty: callback_url is refused.')
param webhookSecretName string = ''

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

var postgresUser = postgresAuth == 'entra' ? identity.outputs.identityName : postgresAppUser

// ---------------------------------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------------------------------

module monitoring 'modules/monitoring.bicep' = {
  name: 'geoetl-monitoring'
  params: {
    location: location
    tags: tags
    logAnalyticsName: logAnalyticsName
    appInsightsName: appInsightsName
    logRetentionDays: logRetentionDays
  }
}

module storage 'modules/storage.bicep' = {
  name: 'geoetl-storage'
  params: {
    location: location
    tags: tags
    hostStorageAccountName: hostStorageAccountName
    dataStorageAccountName: dataStorageAccountName
    hostStorageSku: hostStorageSku
    dataStorageSku: dataStorageSku
    bronzeContainerName: bronzeContainerName
    silverContainerName: silverContainerName
    jobQueueName: jobQueueName
    taskQueueName: taskQueueName
    highPriorityTaskQueueName: highPriorityTaskQueueName
    webhookQueueName: webhookQueueName
  }
}

module keyVault 'modules/key-vault.bicep' = {
  name: 'geoetl-key-vault'
  params: {
    location: location
    tags: tags
    keyVaultName: keyVaultName
  }
}

module postgres 'modules/postgres.bicep' = {
  name: 'geoetl-postgres'
  params: {
    location: location
    tags: tags
    postgresServerName: postgresServerName
    postgresVersion: postgresVersion
    postgresSkuName: postgresSkuName
    postgresSkuTier: postgresSkuTier
    postgresStorageSizeGB: postgresStorageSizeGB
    postgresBackupRetentionDays: postgresBackupRetentionDays
    postgresGeoRedundantBackup: postgresGeoRedundantBackup
    postgresAuth: postgresAuth
    postgresEntraAdminObjectId: postgresEntraAdminObjectId
    postgresEntraAdminPrincipalName: postgresEntraAdminPrincipalName
    postgresEntraAdminPrincipalType: postgresEntraAdminPrincipalType
    postgresAdminLogin: postgresAdminLogin
    postgresAdminPassword: postgresAdminPassword
    postgresDatabaseName: postgresDatabaseName
    postgresPublicNetworkAccess: postgresPublicNetworkAccess
    postgresAllowAzureServices: postgresAllowAzureServices
    postgresFirewallRules: postgresFirewallRules
    postgresPgBouncer: postgresPgBouncer
    pgBouncerMaxClientConnections: pgBouncerMaxClientConnections
    pgBouncerDefaultPoolSize: pgBouncerDefaultPoolSize
    postgresServerMaxConnections: postgresServerMaxConnections
  }
}

// The identity and its role assignments, scoped to the resources of the modules above (their
// names come from those modules' outputs, so the scopes exist first).
module identity 'modules/identity.bicep' = {
  name: 'geoetl-identity'
  params: {
    location: location
    tags: tags
    identityName: identityName
    hostStorageAccountName: storage.outputs.hostStorageAccountName
    dataStorageAccountName: storage.outputs.dataStorageAccountName
    keyVaultName: keyVault.outputs.keyVaultName
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

// Fails the deployment when an instance would get no pooled connection.
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

// Deploys after every module above (it reads their outputs): containers, queues, roles first.
module functionApp 'modules/function-app.bicep' = {
  name: 'geoetl-function-app'
  params: {
    location: location
    tags: tags
    functionAppName: functionAppName
    planName: planName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    pythonVersion: pythonVersion
    identityId: identity.outputs.identityId
    identityClientId: identity.outputs.identityClientId
    hostStorageAccountName: storage.outputs.hostStorageAccountName
    hostBlobEndpoint: storage.outputs.hostBlobEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    dataStorageAccountName: storage.outputs.dataStorageAccountName
    bronzeContainerName: bronzeContainerName
    silverContainerName: silverContainerName
    jobQueueName: jobQueueName
    taskQueueName: taskQueueName
    highPriorityTaskQueueName: highPriorityTaskQueueName
    webhookQueueName: webhookQueueName
    webhookSecretName: webhookSecretName
    postgresHost: postgres.outputs.postgresHost
    postgresDatabaseName: postgresDatabaseName
    postgresUser: postgresUser
    postgresAuth: postgresAuth
    postgresPasswordSecretName: postgresPasswordSecretName
    postgresPgBouncer: postgresPgBouncer
    postgresSchema: postgresSchema
    clientConnectionLimit: connectionBudget.outputs.clientConnectionLimit
    reservedConnections: connectionBudget.outputs.reservedConnections
    appMaxInstances: connectionBudget.outputs.appMaxInstances
    dbPoolMaxSize: connectionBudget.outputs.dbPoolMaxSize
    dbPoolMinSize: connectionBudget.outputs.dbPoolMinSize
    keyVaultUrl: keyVault.outputs.keyVaultUrl
    keyVaultCacheSeconds: keyVaultCacheSeconds
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
    logLevel: logLevel
  }
}

// ---------------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------------

output apiBaseUrl string = 'https://${functionApp.outputs.defaultHostName}/api'
output functionAppName string = functionApp.outputs.functionAppName
output resourceGroupName string = resourceGroup().name
output identityName string = identity.outputs.identityName
output identityClientId string = identity.outputs.identityClientId
output identityPrincipalId string = identity.outputs.identityPrincipalId
output hostStorageAccountName string = storage.outputs.hostStorageAccountName
output dataStorageAccountName string = storage.outputs.dataStorageAccountName
output postgresServerName string = postgres.outputs.postgresServerName
output postgresHost string = postgres.outputs.postgresHost
output postgresDatabaseName string = postgres.outputs.postgresDatabaseName
output postgresAppRole string = postgresUser
output keyVaultName string = keyVault.outputs.keyVaultName
output keyVaultUrl string = keyVault.outputs.keyVaultUrl
output appInsightsName string = monitoring.outputs.appInsightsName
output logAnalyticsName string = monitoring.outputs.logAnalyticsName
output dbPoolMaxSize int = connectionBudget.outputs.dbPoolMaxSize
output connectionsAtFullScale int = connectionBudget.outputs.connectionsAtFullScale
