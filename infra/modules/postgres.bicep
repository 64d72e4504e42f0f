// PostgreSQL Flexible Server with Entra authentication: the server, its Entra administrator, the
// app database, the server parameters (PostGIS allowed, max_connections, TLS required, PgBouncer)
// and the firewall rules.
//
// Parameters keep main.bicep's names; they are described and validated there.

param location string
param tags object
param postgresServerName string
param postgresVersion string
param postgresSkuName string
param postgresSkuTier string
param postgresStorageSizeGB int
param postgresBackupRetentionDays int
param postgresGeoRedundantBackup bool
param postgresAuth string
param postgresEntraAdminObjectId string
param postgresEntraAdminPrincipalName string
param postgresEntraAdminPrincipalType string
param postgresAdminLogin string
@secure()
param postgresAdminPassword string
param postgresDatabaseName string
param postgresPublicNetworkAccess string
param postgresAllowAzureServices bool
param postgresFirewallRules array
param postgresPgBouncer bool
param pgBouncerMaxClientConnections int
param pgBouncerDefaultPoolSize int

@description('max_connections of the server: postgresMaxConnections, or the SKU default (main.bicep computes it for the connection budget).')
param postgresServerMaxConnections int

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
    // PostGIS for stage_vector and pgstac; btree_gist and unaccent for pgstac (its migration creates them).
    value: 'POSTGIS,BTREE_GIST,UNACCENT'
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

output postgresServerName string = postgres.name
output postgresHost string = postgres.properties.fullyQualifiedDomainName
output postgresDatabaseName string = postgresDatabase.name
