// Key Vault (RBAC): secrets named by *_SECRET_NAME settings (the Postgres password in password mode).
// identity.bicep grants the app identity Key Vault Secrets User on it; no access policies.
//
// Parameters keep main.bicep's names; they are described and validated there.

param location string
param tags object
param keyVaultName string

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

output keyVaultName string = keyVault.name
output keyVaultUrl string = keyVault.properties.vaultUri
