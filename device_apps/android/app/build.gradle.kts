plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

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
    }
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
    // Match the ExecuTorch runtime to the exporter: see tool_versions.executorch in the bundle's manifest.json.
    implementation("org.pytorch:executorch-android:1.5.1")
    implementation("com.google.ai.edge.litert:litert:1.4.0")
    implementation("com.facebook.soloader:soloader:0.10.5")
    implementation("androidx.appcompat:appcompat:1.7.0")
}
