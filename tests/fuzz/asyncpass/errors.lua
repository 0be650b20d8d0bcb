async x = 1
await
async function
