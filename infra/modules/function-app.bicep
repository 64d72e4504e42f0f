// The Function App on Flex Consumption: its plan, the site, and every app setting.
//
// The storage, identity, Postgres, Key Vault and Application Insights values come from the other
// modules' outputs, so this module deploys after them: the app starts with its containers,
// queues and role assignments in place.
// Parameters keep main.bicep's names; they are described and validated there.

param location string
param tags object
param functionAppName string
param planName string
param maximumInstanceCount int
param instanceMemoryMB int
param pythonVersion string

// From identity.bicep.
param identityId string
param identityClientId string

// From storage.bicep, and the container and queue names main.bicep gives it.
param hostStorageAccountName string
param hostBlobEndpoint string
param deploymentContainerName string
param dataStorageAccountName string
param bronzeContainerName string
param silverContainerName string
param jobQueueName string
param taskQueueName string
param highPriorityTaskQueueName string
param webhookQueueName string
param webhookSecretName string

// From postgres.bicep and main.bicep.
param postgresHost string
param postgresDatabaseName string
param postgresUser string
param postgresAuth string
param postgresPasswordSecretName string
param postgresPgBouncer bool
param postgresSchema string

// From connection-budget.bicep (its outputs, checked against @minValue there).
param clientConnectionLimit int
param reservedConnections int
param appMaxInstances int
param dbPoolMaxSize int
param dbPoolMinSize int

// From key-vault.bicep and monitoring.bicep.
param keyVaultUrl string
param keyVaultCacheSeconds int
param appInsightsConnectionString string
param logLevel string

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
  AzureWebJobsStorage__accountName: hostStorageAccountName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // Data storage (bronze/silver), identity-based.
  DATA_STORAGE__accountName: dataStorageAccountName
  // The user-assigned identity for DefaultAzureCredential (storage, GDAL, Postgres, Key Vault).
  AZURE_CLIENT_ID: identityClientId
  INPUT_CONTAINERS: bronzeContainerName
  OUTPUT_CONTAINERS: silverContainerName
  BRONZE_CONTAINER: bronzeContainerName
  SILVER_CONTAINER: silverContainerName
  JOB_QUEUE: jobQueueName
  TASK_QUEUE: taskQueueName
  HIGH_PRIORITY_TASK_QUEUE: highPriorityTaskQueueName
  // Job-completion webhooks: https and public addresses only; signed with the Key Vault secret.
  WEBHOOK_QUEUE: webhookQueueName
  WEBHOOK_SECRET_NAME: webhookSecretName
  WEBHOOK_ALLOW_HTTP: 'false'
  WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'false'
  WEBHOOK_RETRY_DELAYS_SECONDS: '60,300,900,1800,3600'
  WEBHOOK_TIMEOUT_SECONDS: '10'
  // Postgres.
  POSTGRES_HOST: postgresHost
  POSTGRES_PORT: postgresPgBouncer ? '6432' : '5432'
  POSTGRES_DB: postgresDatabaseName
  POSTGRES_USER: postgresUser
  POSTGRES_SSLMODE: 'require'
  POSTGRES_AUTH: postgresAuth
  POSTGRES_PASSWORD_SECRET_NAME: postgresAuth == 'password' ? postgresPasswordSecretName : ''
  POSTGRES_PGBOUNCER: postgresPgBouncer ? 'true' : 'false'
  POSTGRES_SCHEMA: postgresSchema
  // Schema stage_vector loads tables into by default (PostGIS is created on first use; allow-listed on the server).
  VECTOR_SCHEMA: 'geodata'
  // Connection budget: DB_POOL_MAX_SIZE x APP_MAX_INSTANCES <= POSTGRES_MAX_CONNECTIONS - POSTGRES_RESERVED_CONNECTIONS.
  POSTGRES_MAX_CONNECTIONS: string(clientConnectionLimit)
  POSTGRES_RESERVED_CONNECTIONS: string(reservedConnections)
  APP_MAX_INSTANCES: string(appMaxInstances)
  DB_POOL_MAX_SIZE: string(dbPoolMaxSize)
  DB_POOL_MIN_SIZE: string(dbPoolMinSize)
  DB_CONNECT_TIMEOUT_SECONDS: '10'
  DB_POOL_TIMEOUT_SECONDS: '30'
  DB_RECONNECT_TIMEOUT_SECONDS: '5'
  DB_HTTP_ACQUIRE_TIMEOUT_SECONDS: '2'
  // Key Vault.
  KEY_VAULT_URL: keyVaultUrl
  KEY_VAULT_CACHE_SECONDS: string(keyVaultCacheSeconds)
  // HTTP API limits.
  MAX_REQUEST_BYTES: '262144'
  JOB_LIST_MAX_LIMIT: '200'
  BLOB_LIST_MAX_LIMIT: '1000'
  CONTAINER_LIST_MAX_LIMIT: '100'
  CONTAINER_BLOB_COUNT_CAP: '1000'
  // Per-caller submission limit (0 = unlimited).
  SUBMIT_RATE_PER_MINUTE: '120'
  SUBMIT_BURST: '60'
  // pgstac and the STAC API (/api/stac): off until the migrator has installed pgstac (PGSTAC_ENABLED=true).
  PGSTAC_ENABLED: 'false'
  STAC_API_ANONYMOUS: 'false'
  STAC_API_MAX_LIMIT: '1000'
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
  VECTOR_TASKS_PER_PROCESS: '1'
  RASTER_READ_DIRECTLY: 'false'
  COLLECTION_WRITER_LEASE_SECONDS: '3600'
  MAX_TASKS_PER_STAGE: '10000'
  LOG_LEVEL: logLevel
  // Telemetry, sent with the identity's Entra token (Application Insights local auth is off).
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
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
      '${identityId}': {}
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
          value: '${hostBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
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

output functionAppName string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
