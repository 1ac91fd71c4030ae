plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

// Runtime versions: one place, used for the dependencies and written into each record (BuildConfig).
val executorchVersion = "1.5.1"  // match tool_versions.executorch in the bundle's manifest.json
val litertVersion = "2.3.0"  // the CompiledModel API; ai-edge-litert 2.3.0 is what the exporter checks with

android {
    namespace = "dev.turbovaed.demo"
    compileSdk = 35
    defaultConfig {
        applicationId = "dev.turbovaed.demo"
        minSdk = 28
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk { abiFilters += listOf("arm64-v8a") }
        buildConfigField("String", "EXECUTORCH_VERSION", "\"$executorchVersion\"")
        buildConfigField("String", "LITERT_VERSION", "\"$litertVersion\"")
    }
    buildFeatures { buildConfig = true }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
    // The app bundle (turbovaed export ... --bundle) is copied here by the README's steps.
    sourceSets["main"].assets.srcDirs("src/main/assets")
    androidResources { noCompress += listOf("pte", "tflite", "bin") }
}

dependencies {
    implementation("org.pytorch:executorch-android:$executorchVersion")
    implementation("com.google.ai.edge.litert:litert:$litertVersion")
    implementation("com.google.ai.edge.litert:litert-gpu:$litertVersion")  // Accelerator.GPU
    implementation("com.facebook.soloader:soloader:0.10.5")
    implementation("androidx.appcompat:appcompat:1.7.0")
}
